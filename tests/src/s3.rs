//! A real S3 protocol server for tests: `s3s-fs` (a file-system backed S3
//! implementation) served in-process on a port the OS picks, with
//! signature checking on. `stop` takes it down mid-test (connections cut,
//! port closed). s3s-fs honours `If-Match` / `If-None-Match` on PutObject
//! but ignores `If-Match` on DeleteObject; [`ConditionalDelete`] adds
//! that, as AWS S3 has it. s3s-fs also checks a PutObject's condition and
//! then writes, so two conditional PUTs racing could both succeed (seen:
//! two backup runs both took the lock): [`Serialized`] runs conditional
//! PUTs one at a time, atomic as AWS S3 makes them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::access::S3Access;
use s3s::auth::SimpleAuth;
use s3s::dto::{DeleteObjectInput, ETagCondition, HeadObjectInput};
use s3s::service::S3ServiceBuilder;
use s3s::{s3_error, S3Request, S3Result, S3};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ACCESS_KEY: &str = "dr-test-access";
pub const SECRET_KEY: &str = "dr-test-secret-key";
pub const BUCKET: &str = "backups";

pub struct S3Server {
    pub addr: SocketAddr,
    /// The directory holding the buckets (one folder each).
    pub root: PathBuf,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl S3Server {
    /// Serves `root` (creating the bucket folder) on 127.0.0.1:0.
    pub async fn start(root: &Path) -> Result<S3Server> {
        std::fs::create_dir_all(root.join(BUCKET))?;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        b.set_access(ConditionalDelete {
            fs: s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?,
        });
        let service = Serialized {
            inner: b.build(),
            lock: Default::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                let h = tokio::spawn(async move {
                    let _ = conn.await;
                });
                c2.lock().unwrap().push(h);
            }
        });
        Ok(S3Server {
            addr,
            root: root.to_path_buf(),
            accept,
            conns,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Takes the server down: closes the port and cuts every connection.
    pub fn stop(&self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Where the object `key` of the bucket lives on disk.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// Writes the credential files and returns the agent YAML `backup.s3`
    /// section body (inline map) for `prefix`.
    pub fn s3_yaml(&self, dir: &Path, prefix: &str) -> Result<String> {
        let (k, s) = (dir.join("s3-key"), dir.join("s3-secret"));
        std::fs::write(&k, ACCESS_KEY)?;
        std::fs::write(&s, SECRET_KEY)?;
        Ok(format!(
            "{{ bucket: {BUCKET}, prefix: \"{prefix}\", endpoint: \"{}\", force_path_style: true, access_key_id_file: \"{}\", secret_access_key_file: \"{}\" }}",
            self.endpoint(),
            k.display(),
            s.display()
        ))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `DeleteObject` with `If-Match`, as AWS S3 answers it: 412 Precondition
/// Failed unless the object's ETag matches, 404 if it does not exist.
/// s3s runs this access hook (after checking the signature) before the
/// operation; it reads the ETag through s3s-fs itself.
struct ConditionalDelete {
    fs: s3s_fs::FileSystem,
}

#[async_trait::async_trait]
impl S3Access for ConditionalDelete {
    async fn delete_object(&self, req: &mut S3Request<DeleteObjectInput>) -> S3Result<()> {
        let Some(cond) = req.input.if_match.clone() else {
            return Ok(());
        };
        let head = req.clone().map_input(|d| HeadObjectInput {
            bucket: d.bucket,
            key: d.key,
            ..Default::default()
        });
        let etag = self.fs.head_object(head).await?.output.e_tag;
        match (cond, etag) {
            (ETagCondition::Any, _) => Ok(()),
            (ETagCondition::ETag(want), Some(have)) if have.strong_cmp(&want) => Ok(()),
            _ => Err(s3_error!(PreconditionFailed, "ETag does not match")),
        }
    }
}

/// Runs conditional PutObjects (`If-None-Match`, `If-Match`) one at a
/// time, so check-and-write is atomic as on AWS S3.
#[derive(Clone)]
struct Serialized {
    inner: s3s::service::S3Service,
    lock: Arc<tokio::sync::Mutex<()>>,
}

type Incoming = hyper::Request<hyper::body::Incoming>;

impl hyper::service::Service<Incoming> for Serialized {
    type Response = <s3s::service::S3Service as hyper::service::Service<Incoming>>::Response;
    type Error = <s3s::service::S3Service as hyper::service::Service<Incoming>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: Incoming) -> Self::Future {
        let conditional = req.method() == hyper::Method::PUT
            && (req.headers().contains_key("if-none-match")
                || req.headers().contains_key("if-match"));
        let (inner, lock) = (self.inner.clone(), self.lock.clone());
        Box::pin(async move {
            let _one_at_a_time = if conditional {
                Some(lock.lock_owned().await)
            } else {
                None
            };
            hyper::service::Service::call(&inner, req).await
        })
    }
}
