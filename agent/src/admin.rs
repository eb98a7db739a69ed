//! The admin gRPC API that `drctl` calls, over mutual TLS, from operator
//! certificates only.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::milvus::{self as mv, rows, Health, Milvus};
use crate::replication::{catalog, SharedState};
use dr_proto::now_ms;
use dr_proto::pb::{self, admin_server::Admin};

/// Upper bound on digest buckets (memory is 12 bytes a bucket).
pub const MAX_BUCKETS: u32 = 1 << 20;

#[derive(Clone)]
pub struct AdminService {
    pub datacenter: String,
    pub peer: String,
    pub operators: Vec<String>,
    pub milvus: Milvus,
    pub health: Arc<Mutex<Health>>,
    pub state: SharedState,
    pub page_rows: usize,
    /// What this agent replicates: digests cover exactly that by default.
    pub filter: catalog::Filter,
    /// The sink side (for collections it keeps unmanaged).
    pub sink: crate::replication::sink::Sink,
    /// Events, markers and drilled outages.
    pub drills: crate::drill::Drills,
    /// The DNS provider this agent switches with, described.
    pub dns: Option<String>,
    /// The front door, when on.
    pub frontdoor: Option<crate::frontdoor::Described>,
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("{e:#}"))
}

impl AdminService {
    async fn collections(
        &self,
        wanted: &[pb::CollectionRef],
    ) -> Result<Vec<mv::CollectionInfo>, Status> {
        let mut out = Vec::new();
        if wanted.is_empty() {
            for db in catalog::databases(&self.milvus)
                .await
                .map_err(unavailable)?
            {
                if !self.filter.wants_db(&db) {
                    continue;
                }
                for name in self
                    .milvus
                    .list_collections(&db)
                    .await
                    .map_err(unavailable)?
                {
                    if !self.filter.wants(&db, &name) {
                        continue;
                    }
                    out.push(
                        self.milvus
                            .describe(&db, &name)
                            .await
                            .map_err(unavailable)?,
                    );
                }
            }
        } else {
            for r in wanted {
                let db = if r.database.is_empty() {
                    "default"
                } else {
                    &r.database
                };
                match self.milvus.describe(db, &r.collection).await {
                    Ok(i) => out.push(i),
                    Err(e) if e.is_not_found() => {
                        return Err(Status::not_found(format!(
                            "no collection {db}.{}",
                            r.collection
                        )))
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
        }
        Ok(out)
    }

    /// Scans `info` at `ts` and calls `f(key, row hash)` for every row.
    async fn scan(
        &self,
        info: &mv::CollectionInfo,
        ts: u64,
        mut f: impl FnMut(&mv::Pk, u64),
    ) -> Result<u64, Status> {
        let mut pages = mv::scan_pages(&self.milvus, info, None, ts, self.page_rows);
        let mut n = 0;
        while let Some(page) = pages.recv().await {
            let page = page.map_err(unavailable)?;
            let hashes = rows::row_hashes(&page.fields).map_err(unavailable)?;
            for (k, h) in page.keys.iter().zip(hashes) {
                f(k, h);
                n += 1;
            }
        }
        Ok(n)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn drill(
        &self,
        request: Request<pb::DrillRequest>,
    ) -> Result<Response<pb::DrillReply>, Status> {
        let who = crate::tls::authorize(&request, &self.operators)?;
        let req = request.into_inner();
        if !crate::drill::valid_id(&req.id) {
            return Err(Status::invalid_argument(
                "id: use 1 to 64 characters of [A-Za-z0-9_-]",
            ));
        }
        let action = pb::DrillAction::try_from(req.action)
            .ok()
            .filter(|a| *a != pb::DrillAction::Unspecified)
            .ok_or_else(|| Status::invalid_argument("action: unknown or unspecified"))?;
        let epoch = self.state.lock().unwrap().epoch;
        let d = &self.drills;
        let mut reply = pb::DrillReply::default();
        let stats_into = |reply: &mut pb::DrillReply, s: crate::drill::MarkerStats| {
            reply.newest_acked = s.newest_acked.map(Into::into);
            reply.markers_written = s.written;
            reply.markers_failed = s.failed;
        };
        match action {
            pb::DrillAction::Unspecified => unreachable!("refused above"),
            pb::DrillAction::MarkersStart => {
                tracing::info!(drill = %req.id, by = %who, "drill: markers requested");
                d.start_markers(&req.id).await.map_err(unavailable)?;
            }
            pb::DrillAction::OutageStart => {
                if req.outage_max_ms == 0 || req.outage_max_ms > 3_600_000 {
                    return Err(Status::invalid_argument(
                        "outage_max_ms: give 1 ms to 1 h (the outage ends by itself then)",
                    ));
                }
                if d.outage_remaining().is_some() {
                    return Err(Status::failed_precondition(
                        "a drilled outage of this datacenter is already under way",
                    ));
                }
                tracing::warn!(drill = %req.id, by = %who, "drill: outage requested");
                let (start, stats) = d
                    .start_outage(&req.id, Duration::from_millis(req.outage_max_ms), epoch)
                    .await;
                reply.outage_start_wall_ms = start;
                stats_into(&mut reply, stats);
            }
            pb::DrillAction::End => {
                reply.discarded = d
                    .end(&req.id, req.discard_after_seq, epoch)
                    .await
                    .map_err(unavailable)?;
                stats_into(&mut reply, d.marker_stats(&req.id).await);
            }
            pb::DrillAction::MarkersRead => {
                reply.newest_present = d
                    .newest_present(&req.id)
                    .await
                    .map_err(unavailable)?
                    .map(Into::into);
                stats_into(&mut reply, d.marker_stats(&req.id).await);
            }
        }
        if let Some(s) = d.outage_started() {
            reply.outage_start_wall_ms = s;
        }
        Ok(Response::new(reply))
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsReply>, Status> {
        crate::tls::authorize(&request, &self.operators)?;
        let since = request.into_inner().since_wall_ms;
        Ok(Response::new(pb::EventsReply {
            events: self.drills.events_since(since),
            now_ms: now_ms().max(0) as u64,
        }))
    }

    async fn drop_unmanaged(
        &self,
        request: Request<pb::DropUnmanagedRequest>,
    ) -> Result<Response<pb::DropUnmanagedReply>, Status> {
        let who = crate::tls::authorize(&request, &self.operators)?;
        let key = request.into_inner().collection;
        if key
            .split_once('.')
            .is_none_or(|(d, c)| d.is_empty() || c.is_empty())
        {
            return Err(Status::invalid_argument(format!(
                "'{key}': name the collection as database.collection"
            )));
        }
        let message = self.sink.drop_unmanaged(&key).await?;
        tracing::warn!(operator = %who, collection = %key, "dropped an unmanaged collection on request");
        Ok(Response::new(pb::DropUnmanagedReply { message }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        crate::tls::authorize(&request, &self.operators)?;
        let now = now_ms();
        let health = self.health.lock().unwrap().clone();
        let s = self.state.lock().unwrap().clone();
        Ok(Response::new(pb::StatusReply {
            datacenter: self.datacenter.clone(),
            role: s.role.as_str().into(),
            epoch: s.epoch,
            peer: self.peer.clone(),
            milvus_healthy: health.healthy,
            milvus_detail: health.detail,
            replication: Some(s.to_pb(now)),
            version: env!("CARGO_PKG_VERSION").into(),
            now_ms: now,
            failover: s.failover.clone(),
            lease_remaining_ms: s.lease_remaining_ms,
            dns: self.dns.clone().unwrap_or_default(),
            frontdoor: self.frontdoor.as_ref().map(|f| f.to_pb(&s)),
        }))
    }

    async fn digest(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestReply>, Status> {
        crate::tls::authorize(&request, &self.operators)?;
        let req = request.into_inner();
        if req.buckets == 0 || req.buckets > MAX_BUCKETS {
            return Err(Status::invalid_argument(format!(
                "buckets must be 1 to {MAX_BUCKETS}, got {}",
                req.buckets
            )));
        }
        let ts = self.milvus.alloc_timestamp().await.map_err(unavailable)?;
        let mut out = Vec::new();
        for info in self.collections(&req.collections).await? {
            let nb = req.buckets as usize;
            let mut d = pb::CollectionDigest {
                database: info.database.clone(),
                collection: info.name.clone(),
                ..Default::default()
            };
            use milvus::proto::common::LoadState;
            let mut state = self
                .milvus
                .load_state(&info.database, &info.name)
                .await
                .map_err(unavailable)?;
            if state == LoadState::Loading {
                // Replication starts loads without waiting for them.
                let _ = self
                    .milvus
                    .wait_loaded(
                        &info.database,
                        &info.name,
                        std::time::Duration::from_secs(120),
                    )
                    .await;
                state = self
                    .milvus
                    .load_state(&info.database, &info.name)
                    .await
                    .map_err(unavailable)?;
            }
            let loaded = state == LoadState::Loaded;
            if !loaded {
                d.error = "not loaded: its rows cannot be read".into();
                out.push(d);
                continue;
            }
            let mut sums = vec![0u64; nb];
            let mut counts = vec![0u32; nb];
            d.rows = self
                .scan(&info, ts, |k, h| {
                    let b = (k.hash64() % nb as u64) as usize;
                    sums[b] = sums[b].wrapping_add(h);
                    counts[b] += 1;
                })
                .await?;
            d.buckets = sums;
            d.counts = counts;
            out.push(d);
        }
        Ok(Response::new(pb::DigestReply {
            collections: out,
            snapshot_ms: mv::hybrid_ts_to_ms(ts),
        }))
    }

    async fn bucket_rows(
        &self,
        request: Request<pb::BucketRowsRequest>,
    ) -> Result<Response<pb::BucketRowsReply>, Status> {
        crate::tls::authorize(&request, &self.operators)?;
        let req = request.into_inner();
        if req.buckets == 0 || req.buckets > MAX_BUCKETS {
            return Err(Status::invalid_argument("buckets out of range"));
        }
        let coll = req
            .collection
            .ok_or_else(|| Status::invalid_argument("collection is required"))?;
        let info = self
            .collections(std::slice::from_ref(&coll))
            .await?
            .remove(0);
        let wanted: BTreeSet<u32> = req.wanted.iter().copied().collect();
        let limit = if req.limit == 0 {
            10_000
        } else {
            req.limit as usize
        };
        let ts = self.milvus.alloc_timestamp().await.map_err(unavailable)?;
        let mut rows_out = Vec::new();
        let mut truncated = false;
        self.scan(&info, ts, |k, h| {
            let b = (k.hash64() % req.buckets as u64) as u32;
            if wanted.contains(&b) {
                if rows_out.len() >= limit {
                    truncated = true;
                    return;
                }
                rows_out.push(pb::KeyHash {
                    key: Some(match k {
                        mv::Pk::Int(v) => pb::key_hash::Key::Int(*v),
                        mv::Pk::Str(s) => pb::key_hash::Key::Str(s.clone()),
                    }),
                    hash: h,
                });
            }
        })
        .await?;
        Ok(Response::new(pb::BucketRowsReply {
            rows: rows_out,
            truncated,
        }))
    }
}
