//! Remote caches: stage results shared through object storage (S3, GCS, Azure, HTTP) or a
//! directory on a shared filesystem, so that a colleague's run of the same stage is a download.
//!
//! A pull is verified file by file against the entry's record (size and blake3) while it is
//! downloaded, into the local store's tmp/, and enters the store only complete (the local
//! store's atomic commit). A push uploads the blobs first and the record last (see [`entry`]).

pub mod bundle;
pub mod config;
pub mod entry;
mod location;

use crate::store::key::{hex, Key};
use crate::store::lock::KeyLock;
use crate::store::manifest::Manifest;
use crate::store::writer::EntryWriter;
use crate::store::Store;
use entry::{blob_path, entry_path, RemoteEntry, RemoteFile};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::path::Path;

/// Transfers in flight at once.
const PARALLEL: usize = 8;

/// Bytes read from a file per chunk while uploading.
const CHUNK: usize = 4 << 20;

/// Files up to this size are uploaded in one request; larger ones in parts of this size (S3
/// refuses parts under 5 MiB but the last).
const PART: usize = 16 << 20;

/// Why a remote could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote's address or configuration is wrong.
    #[error("{0}")]
    Open(String),
    /// The remote did not answer as it should (network, permissions, a missing bucket).
    #[error("{0}")]
    Remote(String),
    /// The remote's copy does not match its record; it is not used.
    #[error("the remote's copy is damaged: {}", .0.join("; "))]
    Damaged(Vec<String>),
    /// The local store could not be read or written.
    #[error("{0}")]
    Local(String),
}

/// How one pull ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pulled {
    /// Downloaded, verified and stored: this many bytes.
    Done(u64),
    /// The remote does not hold it.
    Missing,
    /// The local store holds it already (another process finished or pulled it).
    Already,
    /// Another process on this machine is running or pulling it now.
    Busy,
}

/// How one push ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Uploaded: this many bytes (blobs the remote had are not uploaded again).
    Done(u64),
    /// The remote holds it already.
    Already,
}

/// An opened remote cache.
pub struct Remote {
    store: std::sync::Arc<dyn ObjectStore>,
    prefix: object_store::path::Path,
    shown: String,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Remote {
    /// Opens a remote: a URL (`s3://bucket/prefix`, `gs://`, `az://`, `https://`, `file://`) or a
    /// directory, relative to `base`. Credentials come from the environment (`AWS_*` and the AWS
    /// profile files, `GOOGLE_*`, `AZURE_*`), never from the URL or the store.
    pub fn open(spec: &str, base: &Path) -> Result<Remote, RemoteError> {
        let loc = location::open(spec, base)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Open(format!("cannot start the network runtime: {e}")))?;
        Ok(Remote {
            store: loc.store,
            prefix: loc.prefix,
            shown: loc.shown,
            rt,
        })
    }

    /// How messages name the remote (without credentials).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn remote_error(&self, what: &str, e: object_store::Error) -> RemoteError {
        RemoteError::Remote(format!("{}: {what}: {e}", self.shown))
    }

    /// Which of these keys the remote holds (one small request each, several at once).
    pub fn holds(&self, keys: &[Key]) -> Result<Vec<bool>, RemoteError> {
        self.rt.block_on(async {
            let heads = futures::stream::iter(keys)
                .map(|k| async move {
                    match self.store.head(&entry_path(&self.prefix, k)).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(e) => Err(self.remote_error("cannot look up a result", e)),
                    }
                })
                .buffered(4 * PARALLEL);
            heads.collect::<Vec<_>>().await.into_iter().collect()
        })
    }

    /// Pulls these keys into `store`, several at once; `each` is told as each one ends.
    pub fn pull(
        &self,
        store: &Store,
        keys: &[Key],
        each: impl FnMut(usize, &Result<Pulled, RemoteError>),
    ) -> Vec<Result<Pulled, RemoteError>> {
        self.several(keys, |k| self.pull_one(store, k), each)
    }

    /// Pushes these entries of `store` (with `replace`, overwriting the remote's record and
    /// blobs: what a run does after it found the remote's copy damaged); `each` is told as each
    /// one ends.
    pub fn push(
        &self,
        store: &Store,
        keys: &[(Key, bool)],
        each: impl FnMut(usize, &Result<Pushed, RemoteError>),
    ) -> Vec<Result<Pushed, RemoteError>> {
        self.several(keys, |(k, replace)| self.push_one(store, k, *replace), each)
    }

    /// Runs `job` on every item, [`PARALLEL`] at once, telling `each` as each one ends; the
    /// results in the items' order.
    fn several<'a, I, T, F>(
        &self,
        items: &'a [I],
        job: impl Fn(&'a I) -> F,
        mut each: impl FnMut(usize, &Result<T, RemoteError>),
    ) -> Vec<Result<T, RemoteError>>
    where
        F: std::future::Future<Output = Result<T, RemoteError>>,
    {
        self.rt.block_on(async {
            let mut jobs = futures::stream::iter(items.iter().enumerate())
                .map(|(i, item)| {
                    let fut = job(item);
                    async move { (i, fut.await) }
                })
                .buffer_unordered(PARALLEL);
            let mut out: Vec<Option<Result<T, RemoteError>>> = (0..items.len()).map(|_| None).collect();
            while let Some((i, r)) = jobs.next().await {
                each(i, &r);
                out[i] = Some(r);
            }
            out.into_iter().map(|r| r.expect("every job ends")).collect()
        })
    }

    async fn pull_one(&self, store: &Store, key: &Key) -> Result<Pulled, RemoteError> {
        let local = |what: &str, e: &dyn std::fmt::Display| RemoteError::Local(format!("{what}: {e}"));
        let Some(_lock) = KeyLock::try_acquire(store, key).map_err(|e| local("cannot lock the store entry", &e))?
        else {
            return Ok(Pulled::Busy);
        };
        if store.contains(key) {
            return Ok(Pulled::Already);
        }
        let record = match self.store.get(&entry_path(&self.prefix, key)).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| self.remote_error("cannot read a result's record", e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(Pulled::Missing),
            Err(e) => return Err(self.remote_error("cannot read a result's record", e)),
        };
        let entry = RemoteEntry::parse(&record, key).map_err(RemoteError::Damaged)?;
        let writer = EntryWriter::create(store, key).map_err(|e| local("cannot create the store entry", &e))?;
        let mut problems = Vec::new();
        let mut bytes = 0;
        for (path, file) in &entry.files {
            let dest = writer.dir().join(path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| local("cannot write the store entry", &e))?;
            }
            match self.fetch(file, &dest).await? {
                None => bytes += file.size,
                Some(problem) => problems.push(format!("{path}: {problem}")),
            }
        }
        if !problems.is_empty() {
            return Err(RemoteError::Damaged(problems));
        }
        writer
            .commit()
            .map_err(|e| local("cannot store the pulled result", &e))?;
        Ok(Pulled::Done(bytes))
    }

    /// Downloads one blob to `dest`, hashing it as it comes; `Some(problem)` when it is not
    /// what the record says.
    async fn fetch(&self, file: &RemoteFile, dest: &Path) -> Result<Option<String>, RemoteError> {
        use std::io::Write;
        let got = match self.store.get(&blob_path(&self.prefix, &file.blake3)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(Some("missing from the remote".into())),
            Err(e) => return Err(self.remote_error("cannot download a file", e)),
        };
        let write_error = |e: std::io::Error| RemoteError::Local(format!("cannot write {}: {e}", dest.display()));
        let mut out = std::io::BufWriter::new(std::fs::File::create(dest).map_err(write_error)?);
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut chunks = got.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.remote_error("cannot download a file", e))?;
            size += chunk.len() as u64;
            if size > file.size {
                return Ok(Some(format!("more than the {} bytes recorded", file.size)));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(write_error)?;
        }
        out.flush().map_err(write_error)?;
        Ok(if size != file.size {
            Some(format!("{size} bytes, expected {}", file.size))
        } else if hasher.finalize().to_hex().as_str() != file.blake3 {
            Some("content differs from its recorded blake3".into())
        } else {
            None
        })
    }

    async fn push_one(&self, store: &Store, key: &Key, replace: bool) -> Result<Pushed, RemoteError> {
        let dir = store.entry_dir(key);
        let manifest = Manifest::read(&dir)
            .map_err(|e| RemoteError::Local(format!("{} is not stored here ({e})", &hex(key)[..12])))?;
        let problems = manifest.check_entry(&dir);
        if !problems.is_empty() {
            return Err(RemoteError::Local(format!(
                "the local copy is damaged and was not pushed ({}); `rkd verify` finds such entries",
                problems.join("; ")
            )));
        }
        let record_path = entry_path(&self.prefix, key);
        if !replace {
            match self.store.head(&record_path).await {
                Ok(_) => return Ok(Pushed::Already),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.remote_error("cannot look up a result", e)),
            }
        }
        let mut bytes = 0;
        for (path, file) in &manifest.files {
            let blob = blob_path(&self.prefix, &file.blake3);
            if !replace {
                if let Ok(meta) = self.store.head(&blob).await {
                    if meta.size == file.size {
                        continue;
                    }
                }
            }
            self.upload(&dir.join(path), blob, &file.blake3).await?;
            bytes += file.size;
        }
        let record = serde_json::to_vec_pretty(&RemoteEntry::of(key, &manifest))
            .map_err(|e| RemoteError::Local(e.to_string()))?;
        let put = |mode: PutMode| {
            let payload = PutPayload::from(record.clone());
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            self.store.put_opts(&record_path, payload, opts)
        };
        let mode = if replace { PutMode::Overwrite } else { PutMode::Create };
        match put(mode).await {
            Ok(_) => Ok(Pushed::Done(bytes)),
            // Another machine pushed the same key first: its record stands, and names blobs it
            // uploaded before writing it.
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Pushed::Already)
            }
            // A store without conditional writes: both records are valid, the last one stays.
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                put(PutMode::Overwrite)
                    .await
                    .map(|_| Pushed::Done(bytes))
                    .map_err(|e| self.remote_error("cannot write a result's record", e))
            }
            Err(e) => Err(self.remote_error("cannot write a result's record", e)),
        }
    }

    /// Uploads a file as the blob `blake3`, checking that what was read is that content.
    async fn upload(&self, path: &Path, blob: object_store::path::Path, blake3: &str) -> Result<(), RemoteError> {
        use std::io::Read;
        use tokio::io::AsyncWriteExt;
        let read_error = |e: std::io::Error| RemoteError::Local(format!("cannot read {}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let mut writer = object_store::buffered::BufWriter::with_capacity(self.store.clone(), blob, PART);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let upload_error =
            |e: std::io::Error| RemoteError::Remote(format!("{}: cannot upload a file: {e}", self.shown));
        loop {
            let n = file.read(&mut buf).map_err(read_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer.write_all(&buf[..n]).await.map_err(upload_error)?;
        }
        if hasher.finalize().to_hex().as_str() != blake3 {
            let _ = writer.abort().await;
            return Err(RemoteError::Local(format!(
                "{} changed while it was uploaded; nothing was pushed for it",
                path.display()
            )));
        }
        writer.shutdown().await.map_err(upload_error)
    }
}

#[cfg(test)]
mod tests;
