//! One backup run at a time per bucket and prefix: a lease object in S3,
//! and the fence that stops a run which lost it.
//!
//! `lock.json` names its holder and expires unless renewed (lease
//! `backup.lock_lease`, 5 minutes by default, renewed every fifth of it),
//! so a run killed with the lock held blocks others for at most one lease.
//! Every write is conditional: taking a free lock is `If-None-Match: *`,
//! taking over an expired one and renewing are `If-Match` on the ETag read,
//! and releasing is a `DeleteObject` with `If-Match`, so of two runs racing
//! exactly one wins on S3 (AWS, MinIO and others), and no run deletes or
//! overwrites a lock another run holds. A store that ignores conditions is
//! still covered by reading the lock before every renewal and release and
//! after taking it, which narrows the window to milliseconds.
//!
//! **Fencing.** A holder that can no longer prove it holds the lock must
//! stop. The [`Fence`] of a [`Lock`] trips when
//!
//! - a renewal finds the lock in another holder's name, gone, or changed
//!   under it (the conditional write is refused), or
//! - renewals keep failing (S3 unreachable, slow) until less than a fifth
//!   of the lease (the margin) is left since the last renewal S3 accepted:
//!   the holder gives up *before* another run could take the lock over,
//!   with room for clock offsets between hosts smaller than the margin.
//!
//! A run checks the fence before every write that claims or destroys
//! something (the manifest, each deletion of retention), renews once more
//! right before the manifest ([`Lock::confirm`]), and stops in-flight work
//! when it trips. The lease times come from the monotonic clock, so a
//! wall-clock jump on this host does not stretch them.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::store::Cond;
use super::{BackupError, Store};

pub const LOCK: &str = "lock.json";
/// The default lease (`backup.lock_lease`).
pub const LEASE: Duration = Duration::from_secs(300);

/// How long releasing the lock may take before it is left to expire.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// The timing of one lease, all derived from its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// How long a lock lives without renewal (written into the lock).
    pub lease: Duration,
    /// Pause between two renewals.
    pub renew: Duration,
    /// Pause before retrying a renewal that failed for a network reason.
    pub retry: Duration,
    /// The holder counts itself fenced once less than this is left of the
    /// lease it last renewed.
    pub margin: Duration,
}

impl Lease {
    /// Renewed every fifth of the lease, retried every 25th; fenced with a
    /// fifth left.
    pub fn new(lease: Duration) -> Lease {
        Lease {
            lease,
            renew: lease / 5,
            retry: lease / 25,
            margin: lease / 5,
        }
    }
}

impl Default for Lease {
    fn default() -> Lease {
        Lease::new(LEASE)
    }
}

/// What the lock needs of the object store. [`Store`] is the real one; the
/// tests below use an in-memory one under paused time.
pub trait LeaseStore: Clone + Send + Sync + 'static {
    /// The object and its ETag, or `None` if it does not exist.
    fn get_tagged(
        &self,
        rel: &str,
    ) -> impl Future<Output = Result<Option<(Vec<u8>, String)>>> + Send;
    /// Writes if `cond` holds: the new ETag, or `None` if it did not.
    fn put_if(
        &self,
        rel: &str,
        body: Vec<u8>,
        cond: Cond,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Deletes if the ETag is still `etag`: whether it did.
    fn delete_if(&self, rel: &str, etag: &str) -> impl Future<Output = Result<bool>> + Send;
}

impl LeaseStore for Store {
    fn get_tagged(
        &self,
        rel: &str,
    ) -> impl Future<Output = Result<Option<(Vec<u8>, String)>>> + Send {
        Store::get_tagged(self, rel)
    }
    fn put_if(
        &self,
        rel: &str,
        body: Vec<u8>,
        cond: Cond,
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        Store::put_if(self, rel, body, cond)
    }
    fn delete_if(&self, rel: &str, etag: &str) -> impl Future<Output = Result<bool>> + Send {
        Store::delete_if(self, rel, etag)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockBody {
    token: String,
    holder: String,
    started: DateTime<Utc>,
    expires: DateTime<Utc>,
}

/// Trips once the holder of a lock can no longer prove it holds it; from
/// then on the run must not write or delete anything under the prefix.
#[derive(Clone, Default)]
pub struct Fence {
    tripped: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Fence {
    fn trip(&self, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            // Warned here; the run's failure is logged (once) by its caller.
            warn!(reason = %reason, "lost the backup lock: this run stops");
            *r = Some(reason);
        }
        drop(r);
        self.tripped.cancel();
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.is_cancelled()
    }

    /// Resolves once the fence has tripped.
    pub async fn tripped(&self) {
        self.tripped.cancelled().await
    }

    /// [`BackupError::LostLock`] once tripped.
    pub fn check(&self) -> Result<(), BackupError> {
        if !self.is_tripped() {
            return Ok(());
        }
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        Err(BackupError::LostLock { reason })
    }

    /// The error to stop with (call once tripped).
    pub fn error(&self) -> anyhow::Error {
        match self.check() {
            Err(e) => e.into(),
            Ok(()) => anyhow::anyhow!("the backup lock fence has not tripped"),
        }
    }
}

/// Runs `work` until it ends or `fence` trips. Work checks the fence
/// itself where it can stop cleanly (aborting its uploads), so on a trip it
/// gets `grace` to do that before it is dropped where it stands.
pub async fn fenced<T>(
    fence: &Fence,
    grace: Duration,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        _ = fence.tripped() => match tokio::time::timeout(grace, &mut work).await {
            Ok(r) => r,
            Err(_) => Err(fence.error()),
        },
    }
}

/// A held lock; release it with [`Lock::release`] (dropping it stops the
/// renewals and leaves the lease to expire).
pub struct Lock<S: LeaseStore = Store> {
    inner: Arc<Inner<S>>,
    stop: CancellationToken,
}

struct Inner<S> {
    store: S,
    token: String,
    holder: String,
    started: DateTime<Utc>,
    lease: Lease,
    fence: Fence,
    /// Held during a renewal (and the release), so they never overlap.
    renewing: tokio::sync::Mutex<()>,
    /// When the fence trips unless a renewal succeeds first: the start of
    /// the last write S3 accepted, plus the lease, minus the margin.
    deadline: Mutex<Instant>,
}

impl<S> Drop for Lock<S>
where
    S: LeaseStore,
{
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn body(token: &str, holder: &str, started: DateTime<Utc>, lease: Duration) -> LockBody {
    LockBody {
        token: token.into(),
        holder: holder.into(),
        started,
        expires: Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default(),
    }
}

async fn read<S: LeaseStore>(store: &S) -> Result<Option<(LockBody, String)>> {
    // An unreadable lock body counts as expired (it can be taken over).
    Ok(store.get_tagged(LOCK).await?.map(|(b, etag)| {
        let body = serde_json::from_slice(&b).unwrap_or(LockBody {
            token: String::new(),
            holder: "an unreadable lock".into(),
            started: Utc::now(),
            expires: DateTime::<Utc>::MIN_UTC,
        });
        (body, etag)
    }))
}

fn busy(cur: LockBody) -> anyhow::Error {
    BackupError::Busy {
        holder: cur.holder,
        started: cur.started.to_rfc3339(),
        expires: cur.expires.to_rfc3339(),
    }
    .into()
}

/// Why a conditional write lost, for the Busy message.
async fn winner<S: LeaseStore>(store: &S) -> anyhow::Error {
    match read(store).await {
        Ok(Some((cur, _))) => busy(cur),
        _ => BackupError::Busy {
            holder: "another run, which took the lock at the same moment".into(),
            started: Utc::now().to_rfc3339(),
            expires: "-".into(),
        }
        .into(),
    }
}

/// The outcome of one renewal attempt that reached S3.
enum Renewal {
    Renewed,
    /// The lock is not ours any more: why.
    Lost(String),
}

impl<S: LeaseStore> Inner<S> {
    /// One renewal: read the lock, and if it is still ours, rewrite it on
    /// the condition that nobody wrote since the read. Gives up (and trips
    /// the fence) when the lease can no longer be proven in time.
    async fn renew(&self) -> Result<()> {
        let _renewing = self.renewing.lock().await;
        self.fence.check()?;
        let deadline = self.deadline();
        let sent = Instant::now();
        let attempt = async {
            let etag = match read(&self.store).await.context("read the backup lock")? {
                Some((cur, etag)) if cur.token == self.token => etag,
                Some((cur, _)) => {
                    return Ok(Renewal::Lost(format!(
                        "{} took it over (since {})",
                        cur.holder,
                        cur.started.to_rfc3339()
                    )))
                }
                None => {
                    return Ok(Renewal::Lost(
                        "the lock object was deleted by someone else".into(),
                    ))
                }
            };
            // The ETag just read, not the one of our last write: a renewal
            // whose answer was lost may have landed, and the lock read back
            // in our name is still ours.
            let b = body(&self.token, &self.holder, self.started, self.lease.lease);
            let written = self
                .store
                .put_if(LOCK, serde_json::to_vec(&b)?, Cond::ETag(etag))
                .await
                .context("renew the backup lock")?;
            Ok(match written {
                Some(_) => Renewal::Renewed,
                None => Renewal::Lost(match read(&self.store).await {
                    Ok(Some((cur, _))) if cur.token != self.token => format!(
                        "{} took it over (since {})",
                        cur.holder,
                        cur.started.to_rfc3339()
                    ),
                    _ => "it changed under this run (a conditional renewal was refused)".into(),
                }),
            })
        };
        let outcome = tokio::time::timeout_at(deadline, attempt).await;
        match outcome {
            Ok(Ok(Renewal::Renewed)) => {
                *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) =
                    sent + self.lease.lease - self.lease.margin;
                Ok(())
            }
            Ok(Ok(Renewal::Lost(why))) => {
                self.fence.trip(why);
                Err(self.fence.error())
            }
            Ok(Err(e)) if Instant::now() < deadline => Err(e),
            Ok(Err(e)) => {
                self.fence.trip(format!(
                    "could not renew it ({e:#}), and less than {}s of its lease may be left",
                    self.lease.margin.as_secs_f32()
                ));
                Err(self.fence.error())
            }
            Err(_) => {
                self.fence.trip(format!(
                    "could not renew it in time (S3 did not answer), and less than {}s of its lease may be left",
                    self.lease.margin.as_secs_f32()
                ));
                Err(self.fence.error())
            }
        }
    }

    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Renews every `renew` (every `retry` after a failure) until stopped or
/// fenced; trips the fence at the deadline even while S3 hangs.
async fn renew_loop<S: LeaseStore>(inner: Arc<Inner<S>>, stop: CancellationToken) {
    let mut pause = inner.lease.renew;
    loop {
        let deadline = inner.deadline();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = inner.fence.tripped() => return,
            _ = tokio::time::sleep_until((Instant::now() + pause).min(deadline)) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = inner.renew() => match r {
                Ok(()) => pause = inner.lease.renew,
                Err(_) if inner.fence.is_tripped() => return,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "could not renew the backup lock; retrying");
                    pause = inner.lease.retry;
                }
            },
        }
    }
}

impl Lock<Store> {
    /// Takes the lock or fails with [`BackupError::Busy`].
    pub async fn acquire(store: &Store, holder: &str, lease: Lease) -> Result<Lock<Store>> {
        Lock::acquire_in(store, holder, lease).await
    }
}

impl<S: LeaseStore> Lock<S> {
    /// [`Lock::acquire`] on any [`LeaseStore`].
    pub async fn acquire_in(store: &S, holder: &str, lease: Lease) -> Result<Lock<S>> {
        let cond = match read(store).await? {
            Some((cur, _)) if cur.expires > Utc::now() => return Err(busy(cur)),
            Some((_, etag)) => Cond::ETag(etag),
            None => Cond::Absent,
        };
        let token = uuid::Uuid::new_v4().to_string();
        let started = Utc::now();
        let sent = Instant::now();
        let b = body(&token, holder, started, lease.lease);
        let written = store
            .put_if(LOCK, serde_json::to_vec(&b)?, cond)
            .await
            .context("write the backup lock")?;
        if written.is_none() {
            return Err(winner(store).await);
        }
        match read(store).await? {
            Some((cur, _)) if cur.token == token => {}
            Some((cur, _)) => return Err(busy(cur)),
            None => anyhow::bail!("the backup lock vanished right after it was written"),
        }
        let inner = Arc::new(Inner {
            store: store.clone(),
            token,
            holder: holder.to_string(),
            started,
            lease,
            fence: Fence::default(),
            renewing: tokio::sync::Mutex::new(()),
            deadline: Mutex::new(sent + lease.lease - lease.margin),
        });
        let stop = CancellationToken::new();
        tokio::spawn(renew_loop(inner.clone(), stop.clone()));
        Ok(Lock { inner, stop })
    }

    /// The fence of this lock (trips when the lock is lost).
    pub fn fence(&self) -> Fence {
        self.inner.fence.clone()
    }

    /// Renews now, before a write that must happen under the lock (`what`,
    /// for the log). Fails with [`BackupError::LostLock`] if the lock is
    /// lost. If S3 cannot be reached but the lease is still provably ours,
    /// goes ahead: the write needs S3 anyway, and the lease covers it.
    pub async fn confirm(&self, what: &str) -> Result<()> {
        match self.inner.renew().await {
            Ok(()) => Ok(()),
            Err(e) if self.inner.fence.is_tripped() => Err(e),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "could not renew the backup lock before {what}; the lease still covers it");
                Ok(self.inner.fence.check()?)
            }
        }
    }

    /// How long the lease is still provably ours (zero once fenced).
    pub fn valid_for(&self) -> Duration {
        if self.inner.fence.is_tripped() {
            return Duration::ZERO;
        }
        self.inner
            .deadline()
            .saturating_duration_since(Instant::now())
    }

    /// Stops renewing and deletes the lock if it is still ours: only on the
    /// condition that it still has the ETag it had when read in our name,
    /// so a lock another run took in between is never deleted. (On a store
    /// that ignores `If-Match` on DeleteObject, as some S3-compatible ones
    /// do, the read is the only guard: a takeover landing between the read
    /// and the delete, a few milliseconds, would then be deleted.)
    pub async fn release(self) {
        self.stop.cancel();
        let inner = self.inner.clone();
        let r = tokio::time::timeout(RELEASE_TIMEOUT, async move {
            // Waits for a renewal still in flight.
            let _renewing = inner.renewing.lock().await;
            match read(&inner.store).await? {
                Some((cur, etag)) if cur.token == inner.token => {
                    let deleted = inner.store.delete_if(LOCK, &etag).await?;
                    if !deleted {
                        info!("the backup lock changed hands while being released; left to its new holder");
                    }
                }
                Some((cur, _)) => {
                    info!(holder = %cur.holder, "the backup lock is held by another run now; left alone")
                }
                None => {}
            }
            anyhow::Ok(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "could not release the backup lock; it expires by itself")
            }
            Err(_) => {
                warn!("releasing the backup lock took too long; it expires by itself")
            }
        }
    }
}

/// Who holds the lock now, if anyone (for `list`).
pub async fn holder(store: &Store) -> Result<Option<String>> {
    Ok(read(store)
        .await?
        .map(|(l, _)| l)
        .filter(|l| l.expires > Utc::now())
        .map(|l| format!("{} since {}", l.holder, l.started.to_rfc3339())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the in-memory store answers.
    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    enum Mode {
        #[default]
        Up,
        /// Every call fails at once (connection refused).
        Failing,
        /// No call ever answers.
        Hanging,
    }

    #[derive(Default)]
    struct Mem {
        obj: Option<(Vec<u8>, String)>,
        writes: u64,
        calls: u64,
        mode: Mode,
        /// Another holder writes the lock just before our next write lands.
        takeover_before_put: Option<String>,
    }

    /// One object store in memory, honouring the write conditions as S3 does.
    #[derive(Clone, Default)]
    struct MemStore(Arc<Mutex<Mem>>);

    impl MemStore {
        fn set_mode(&self, mode: Mode) {
            self.0.lock().unwrap().mode = mode;
        }

        /// Another holder's unconditional write, as a run ignoring our lease
        /// (or an operator) would do.
        fn overwrite(&self, holder: &str) {
            let mut m = self.0.lock().unwrap();
            Self::write_other(&mut m, holder);
        }

        fn write_other(m: &mut Mem, holder: &str) {
            let b = body("other", holder, Utc::now(), LEASE);
            m.writes += 1;
            m.obj = Some((serde_json::to_vec(&b).unwrap(), format!("\"{}\"", m.writes)));
        }

        fn holder(&self) -> Option<String> {
            let m = self.0.lock().unwrap();
            m.obj
                .as_ref()
                .map(|(b, _)| serde_json::from_slice::<LockBody>(b).unwrap().holder)
        }

        fn calls(&self) -> u64 {
            self.0.lock().unwrap().calls
        }

        async fn enter(&self) -> Result<()> {
            let mode = {
                let mut m = self.0.lock().unwrap();
                m.calls += 1;
                m.mode
            };
            match mode {
                Mode::Up => Ok(()),
                Mode::Failing => anyhow::bail!("cannot reach S3 (connection failed)"),
                Mode::Hanging => std::future::pending().await,
            }
        }
    }

    impl LeaseStore for MemStore {
        async fn get_tagged(&self, _rel: &str) -> Result<Option<(Vec<u8>, String)>> {
            self.enter().await?;
            Ok(self.0.lock().unwrap().obj.clone())
        }

        async fn put_if(&self, _rel: &str, body: Vec<u8>, cond: Cond) -> Result<Option<String>> {
            self.enter().await?;
            let mut m = self.0.lock().unwrap();
            if let Some(h) = m.takeover_before_put.take() {
                Self::write_other(&mut m, &h);
            }
            let holds = match (&cond, &m.obj) {
                (Cond::Absent, o) => o.is_none(),
                (Cond::ETag(e), Some((_, cur))) => e == cur,
                (Cond::ETag(_), None) => false,
            };
            if !holds {
                return Ok(None);
            }
            m.writes += 1;
            let etag = format!("\"{}\"", m.writes);
            m.obj = Some((body, etag.clone()));
            Ok(Some(etag))
        }

        async fn delete_if(&self, _rel: &str, etag: &str) -> Result<bool> {
            self.enter().await?;
            let mut m = self.0.lock().unwrap();
            if m.obj.as_ref().is_some_and(|(_, cur)| cur == etag) {
                m.obj = None;
                return Ok(true);
            }
            Ok(false)
        }
    }

    fn lost(fence: &Fence) -> String {
        match fence.check() {
            Err(BackupError::LostLock { reason }) => reason,
            other => panic!("the fence has not tripped: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_taken_over_trips_the_fence_at_the_next_renewal_and_is_left_to_its_holder() {
        let lease = Lease::default();
        let s3 = MemStore::default();
        let lock = Lock::acquire_in(&s3, "run a", lease).await.unwrap();
        let fence = lock.fence();
        let t0 = Instant::now();
        s3.overwrite("run b");
        fence.tripped().await;
        assert_eq!(t0.elapsed(), lease.renew, "noticed at the first renewal");
        assert!(
            lost(&fence).contains("run b took it over"),
            "{}",
            lost(&fence)
        );
        assert!(lock.confirm("writing the manifest").await.is_err());
        assert_eq!(lock.valid_for(), Duration::ZERO);
        lock.release().await;
        assert_eq!(s3.holder().as_deref(), Some("run b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_refused_by_its_condition_trips_the_fence() {
        let lease = Lease::default();
        let s3 = MemStore::default();
        let lock = Lock::acquire_in(&s3, "run a", lease).await.unwrap();
        let fence = lock.fence();
        // The renewal reads the lock in our name; run b's write lands
        // between that read and our write, whose If-Match then fails.
        s3.0.lock().unwrap().takeover_before_put = Some("run b".into());
        let t0 = Instant::now();
        let e = lock.confirm("writing the manifest").await.unwrap_err();
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "no waiting for the renewal loop"
        );
        assert!(
            matches!(
                e.downcast_ref::<BackupError>(),
                Some(BackupError::LostLock { .. })
            ),
            "{e:#}"
        );
        assert!(fence.is_tripped());
        assert!(
            lost(&fence).contains("run b took it over"),
            "{}",
            lost(&fence)
        );
        // Not overwritten by the refused renewal, not deleted by the release.
        lock.release().await;
        assert_eq!(s3.holder().as_deref(), Some("run b"));
    }

    /// S3 failing (`Failing`) or silent (`Hanging`) from just after the
    /// lock was taken: the fence trips once the margin is reached, before
    /// the lease could lapse, and not earlier.
    async fn renewals_failing_until_the_margin(mode: Mode) {
        let lease = Lease::default();
        let s3 = MemStore::default();
        let lock = Lock::acquire_in(&s3, "run a", lease).await.unwrap();
        let fence = lock.fence();
        let t0 = Instant::now();
        s3.set_mode(mode);
        let calls = s3.calls();
        // The default 5-minute lease: fenced a minute before it could lapse.
        let fenced_at = Duration::from_secs(240);
        assert_eq!(lease.lease, Duration::from_secs(300));
        tokio::time::sleep(fenced_at - Duration::from_millis(1)).await;
        assert!(!fence.is_tripped(), "{mode:?}: fenced before the margin");
        assert!(lock.valid_for() > Duration::ZERO);
        fence.tripped().await;
        assert_eq!(t0.elapsed(), fenced_at, "{mode:?}");
        let reason = lost(&fence);
        assert!(reason.contains("could not renew"), "{reason}");
        if mode == Mode::Failing {
            // A first renewal after `renew`, then retries every `retry`,
            // the last one at the deadline.
            let retries = (fenced_at - lease.renew).as_secs() / lease.retry.as_secs();
            assert_eq!(s3.calls() - calls, 1 + retries);
        }
        // Renewals stop once fenced.
        let calls = s3.calls();
        tokio::time::sleep(lease.lease).await;
        assert_eq!(s3.calls(), calls);
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_failing_trip_the_fence_a_margin_before_the_lease_lapses() {
        renewals_failing_until_the_margin(Mode::Failing).await;
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_hanging_trip_the_fence_a_margin_before_the_lease_lapses() {
        renewals_failing_until_the_margin(Mode::Hanging).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_outage_does_not_fence_and_release_deletes_our_lock() {
        let lease = Lease::default();
        let s3 = MemStore::default();
        let lock = Lock::acquire_in(&s3, "run a", lease).await.unwrap();
        let fence = lock.fence();
        s3.set_mode(Mode::Failing);
        tokio::time::sleep(lease.lease - lease.margin - lease.retry).await;
        s3.set_mode(Mode::Up);
        tokio::time::sleep(lease.lease * 3).await;
        assert!(!fence.is_tripped(), "{}", lost(&fence));
        assert!(lock.valid_for() >= lease.lease - lease.margin - lease.renew);
        lock.confirm("writing the manifest").await.unwrap();
        assert_eq!(s3.holder().as_deref(), Some("run a"));
        lock.release().await;
        assert_eq!(s3.holder(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn fenced_work_gets_its_grace_then_is_dropped() {
        let fence = Fence::default();
        let grace = Duration::from_secs(5);
        let f = fence.clone();
        let t0 = Instant::now();
        // Work that stops by itself once it sees the fence.
        let r: Result<()> = tokio::join!(
            fenced(&fence, grace, async {
                f.tripped().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                anyhow::bail!("stopped by itself")
            }),
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                fence.trip("taken over".into());
            }
        )
        .0;
        assert_eq!(r.unwrap_err().to_string(), "stopped by itself");
        assert_eq!(t0.elapsed(), Duration::from_secs(11));
        // Work that ignores it is dropped after the grace.
        let t0 = Instant::now();
        let r: Result<()> = fenced(&fence, grace, std::future::pending()).await;
        assert!(matches!(
            r.unwrap_err().downcast_ref::<BackupError>(),
            Some(BackupError::LostLock { .. })
        ));
        assert_eq!(t0.elapsed(), grace);
    }
}
