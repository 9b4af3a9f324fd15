//! Object storage through the `object_store` crate: a local folder in embedded mode, an
//! S3-style bucket in a cluster. Domains address "buckets" as top-level prefixes of the
//! configured root (uploads spool under `uploads/`, intake writes under each genre's bucket).

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    local::LocalFileSystem,
    path::Path,
};

use crate::settings::parse_duration;

mod local_fs;
mod writer;

pub use writer::ObjectWriter;

/// How long an S3-style store may take to fail (the object store section of the settings).
/// object_store's own defaults (5 s to connect, retries for up to 3 minutes) kept an
/// upload waiting minutes against an unreachable endpoint before it could answer 503.
#[derive(Debug, Clone, clap::Args)]
pub struct ObjectStoreArgs {
    /// Time to open a connection to an S3-style store; each try that does not connect
    /// in time fails (and may be retried, below).
    #[arg(long, env = "OBJECT_STORE_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub object_store_connect_timeout: Duration,
    /// Time after a request's first try within which a failed try (refused, timed out, a
    /// 5xx) is tried again; after it the request fails, and an upload answers 503. An
    /// unreachable store fails a request within about this plus the connect timeout.
    #[arg(long, env = "OBJECT_STORE_RETRY_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub object_store_retry_timeout: Duration,
}

#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Human-readable location, for logs and /health.
    location: String,
    /// The same store, typed, and its folder, when it is local.
    local: Option<LocalFolder>,
}

/// A local store as such: [`ObjectStorage::put`] and [`ObjectStorage::writer`] write new
/// objects their own faster way (see there), and a few chores are local-only (clearing the
/// staging files of writes interrupted by a crash).
#[derive(Clone)]
struct LocalFolder {
    store: Arc<LocalFileSystem>,
    root: std::path::PathBuf,
}

impl ObjectStorage {
    /// Opens `OBJECT_STORE_URL`, or the folder `default_folder` when it is unset.
    pub fn open(url: Option<&str>, default_folder: &std::path::Path, args: &ObjectStoreArgs) -> anyhow::Result<Self> {
        match url {
            None => Self::local(default_folder),
            Some(url) if url.starts_with("file://") => {
                let parsed = url::Url::parse(url).with_context(|| format!("OBJECT_STORE_URL `{url}` is not a URL"))?;
                let path = parsed
                    .to_file_path()
                    .map_err(|()| anyhow::anyhow!("OBJECT_STORE_URL `{url}` must be an absolute file:// path"))?;
                Self::local(&path)
            }
            Some(url) if url.starts_with("s3://") => {
                let retry = RetryConfig { retry_timeout: args.object_store_retry_timeout, ..RetryConfig::default() };
                let connect_timeout = format!("{}ms", args.object_store_connect_timeout.as_millis());
                let store = AmazonS3Builder::from_env()
                    .with_url(url)
                    // Set key by key: `with_client_options` would drop the AWS_* client
                    // settings read from the environment (AWS_ALLOW_HTTP, …).
                    .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), connect_timeout)
                    .with_retry(retry)
                    .build()
                    .with_context(|| format!("OBJECT_STORE_URL `{url}`"))?;
                Ok(Self { store: Arc::new(store), location: url.to_string(), local: None })
            }
            Some(url) => anyhow::bail!("OBJECT_STORE_URL `{url}`: use s3://bucket or file:///absolute/path"),
        }
    }

    pub fn local(folder: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create the object store folder {}", folder.display()))?;
        let store = Arc::new(
            LocalFileSystem::new_with_prefix(folder)
                .with_context(|| format!("cannot open the object store folder {}", folder.display()))?,
        );
        Ok(Self {
            store: store.clone(),
            location: format!("file://{}", folder.display()),
            local: Some(LocalFolder { store, root: folder.to_path_buf() }),
        })
    }

    /// Writes the whole object at `path`, replacing any there. Readers see the old object or
    /// the new one, never a part, and a crash mid-write leaves the old one (or none).
    ///
    /// On a local folder, an object whose name is new is written as an unnamed file and then
    /// given its name (Linux `O_TMPFILE` + `linkat`): one directory entry made, against the
    /// three changes and second lookup of object_store's staging file and rename, which ran
    /// the intake's writes at less than half the speed of plain file creation (bench/intake.sh).
    /// A name that exists, or a system without `O_TMPFILE`, takes object_store's way.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> anyhow::Result<()> {
        if let Some(local) = &self.local {
            let file = local.store.path_to_filesystem(path)?;
            let content = bytes.clone();
            if tokio::task::spawn_blocking(move || local_fs::create_new(&file, &content)).await?? {
                return Ok(());
            }
        }
        self.store.put(path, PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// Starts writing a large object at `path` piece by piece (see [`ObjectWriter`]).
    pub async fn writer(&self, path: &Path) -> anyhow::Result<ObjectWriter> {
        if let Some(local) = &self.local {
            let file = local.store.path_to_filesystem(path)?;
            if let Some(folder) = file.parent().map(std::path::Path::to_path_buf) {
                let writer = tokio::task::spawn_blocking(move || {
                    local_fs::create_folder_synced(&folder)?;
                    ObjectWriter::local(&folder, file)
                })
                .await??;
                if let Some(writer) = writer {
                    return Ok(writer);
                }
            }
        }
        Ok(ObjectWriter::multipart(self.store.as_ref(), path).await?)
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The folder of a local store; `None` for S3-style stores.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local.as_ref().map(|local| local.root.as_path())
    }

    /// Proves the store is reachable and writable: write, read back, delete a probe object.
    pub async fn check(&self, node: &str) -> anyhow::Result<()> {
        let probe = Path::from(format!(".health/{node}"));
        self.store.put(&probe, PutPayload::from_static(b"ok")).await?;
        self.store.head(&probe).await?;
        self.store.delete(&probe).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_creates_then_replaces_whole_objects_and_leaves_nothing_else() {
        let folder = tempfile::tempdir().expect("temp dir");
        let storage = ObjectStorage::local(folder.path()).expect("local store");
        let path = Path::from_iter(["romance", "A title.json"]);

        storage.put(&path, Bytes::from_static(b"first")).await.expect("create");
        let file = folder.path().join("romance").join("A title.json");
        assert_eq!(std::fs::read(&file).expect("created"), b"first");
        let created_mode = std::fs::metadata(&file).expect("metadata").permissions();

        // The name exists now: the object is replaced (object_store's staging and rename).
        storage.put(&path, Bytes::from_static(b"second, longer")).await.expect("replace");
        assert_eq!(std::fs::read(&file).expect("replaced"), b"second, longer");
        let got = storage.store().get(&path).await.expect("readable through object_store");
        assert_eq!(&got.bytes().await.expect("bytes")[..], b"second, longer");
        assert_eq!(
            std::fs::metadata(&file).expect("metadata").permissions(),
            created_mode,
            "same permissions either way"
        );

        // Another new name, now that the folder exists: the unnamed-file way, same result.
        let second = Path::from_iter(["romance", "B title.json"]);
        storage.put(&second, Bytes::from_static(b"third")).await.expect("create in an existing folder");
        let second_file = folder.path().join("romance").join("B title.json");
        assert_eq!(std::fs::read(&second_file).expect("created"), b"third");
        assert_eq!(std::fs::metadata(&second_file).expect("metadata").permissions(), created_mode);

        assert_eq!(
            names_in(&folder.path().join("romance")),
            ["A title.json", "B title.json"],
            "no staging or unnamed files left behind"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_is_linked_only_under_a_new_name_in_an_existing_folder() {
        let folder = tempfile::tempdir().expect("temp dir");
        let file = folder.path().join("new.json");
        assert!(local_fs::create_new(&file, b"one").expect("create"), "a new name in an existing folder");
        assert_eq!(std::fs::read(&file).expect("linked"), b"one");
        assert!(!local_fs::create_new(&file, b"two").expect("exists"), "an existing name is left to the caller");
        assert_eq!(std::fs::read(&file).expect("unchanged"), b"one");
        let missing = folder.path().join("no-such-folder").join("x.json");
        assert!(!local_fs::create_new(&missing, b"x").expect("no folder"), "a missing folder is left to the caller");
        assert_eq!(std::fs::read_dir(folder.path()).expect("folder").count(), 1, "nothing else was created");
    }

    #[test]
    fn synced_folders_are_made_with_their_missing_parents() {
        let folder = tempfile::tempdir().expect("temp dir");
        let nested = folder.path().join("a").join("b").join("c");
        local_fs::create_folder_synced(&nested).expect("create");
        assert!(nested.is_dir());
        local_fs::create_folder_synced(&nested).expect("an existing folder is fine");
        std::fs::write(folder.path().join("file"), b"x").expect("file");
        assert!(local_fs::create_folder_synced(&folder.path().join("file").join("d")).is_err(), "a file in the way");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_takes_aligned_then_unaligned_appends_in_order() {
        let folder = tempfile::tempdir().expect("temp dir");
        let mut unnamed = local_fs::Unnamed::create(folder.path(), true).expect("open").expect("supported here");
        let content = pattern(3 * local_fs::DIRECT_ALIGN + 100);
        // An aligned copy of the first two aligned blocks, then an unaligned slice (which
        // ends the direct writes), then the rest.
        let mut memory = vec![0u8; 3 * local_fs::DIRECT_ALIGN];
        let start = memory.as_ptr().align_offset(local_fs::DIRECT_ALIGN);
        let aligned = &mut memory[start..start + 2 * local_fs::DIRECT_ALIGN];
        aligned.copy_from_slice(&content[..2 * local_fs::DIRECT_ALIGN]);
        unnamed.append(aligned).expect("aligned append");
        unnamed.append(&content[2 * local_fs::DIRECT_ALIGN..2 * local_fs::DIRECT_ALIGN + 7]).expect("unaligned");
        unnamed.append(&content[2 * local_fs::DIRECT_ALIGN + 7..]).expect("the rest");
        let file = folder.path().join("named.bin");
        assert!(unnamed.link_as(&file).expect("link"), "a new name");
        assert!(std::fs::read(&file).expect("read") == content, "the bytes in the order appended");
    }

    /// The names in `folder`, sorted.
    fn names_in(folder: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .expect("folder")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A body of `len` bytes that differs at every position (a misplaced block shows).
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Feeds `content` to `writer` in chunks of the given sizes, cycling.
    async fn write_in_chunks(writer: &mut ObjectWriter, content: &[u8], sizes: &[usize]) {
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == content.len() {
                break;
            }
            let end = (at + size).min(content.len());
            writer.write(Bytes::copy_from_slice(&content[at..end])).await.expect("write");
            at = end;
        }
    }

    #[tokio::test]
    async fn a_local_writer_makes_the_whole_object_appear_at_finish_and_nothing_on_abort() {
        let folder = tempfile::tempdir().expect("temp dir");
        let storage = ObjectStorage::local(folder.path()).expect("local store");
        // Several blocks, chunks that straddle them, and a tail that is not block-aligned.
        let content = pattern(9 * 1024 * 1024 + 4_321);
        let path = Path::from_iter(["uploads", "big.json"]);
        let file = folder.path().join("uploads").join("big.json");
        let mut writer = storage.writer(&path).await.expect("writer");
        write_in_chunks(&mut writer, &content, &[65_536, 1, 777_777, 4_096]).await;
        assert!(!file.exists(), "nothing is visible before finish");
        writer.finish().await.expect("finish");
        assert!(std::fs::read(&file).expect("written") == content, "the object holds exactly the bytes written");

        // Small objects (one partial block) and empty ones too.
        for (name, len) in [("small.json", 10), ("empty.json", 0)] {
            let path = Path::from_iter(["uploads", name]);
            let mut writer = storage.writer(&path).await.expect("writer");
            write_in_chunks(&mut writer, &pattern(len), &[3]).await;
            writer.finish().await.expect("finish");
            assert_eq!(std::fs::read(folder.path().join("uploads").join(name)).expect("written"), pattern(len));
        }

        let aborted = Path::from_iter(["uploads", "aborted.json"]);
        let mut writer = storage.writer(&aborted).await.expect("writer");
        write_in_chunks(&mut writer, &content[..5 * 1024 * 1024], &[1 << 20]).await;
        writer.abort().await.expect("abort");
        assert_eq!(
            names_in(&folder.path().join("uploads")),
            ["big.json", "empty.json", "small.json"],
            "an aborted object leaves nothing"
        );
    }

    #[tokio::test]
    async fn a_multipart_writer_gives_the_same_object() {
        let store = object_store::memory::InMemory::new();
        let content = pattern(11 * 1024 * 1024 + 5);
        let path = Path::from("uploads/big.json");
        let mut writer = ObjectWriter::multipart(&store, &path).await.expect("writer");
        write_in_chunks(&mut writer, &content, &[1 << 20, 12_345]).await;
        writer.finish().await.expect("finish");
        let got = store.get(&path).await.expect("stored").bytes().await.expect("bytes");
        assert!(got[..] == content[..], "the object holds exactly the bytes written");
    }
}
