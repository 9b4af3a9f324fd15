//! Object storage through the `object_store` crate: a local folder in embedded mode, an
//! S3-style bucket in a cluster. Domains address "buckets" as top-level prefixes of the
//! configured root (uploads spool under `uploads/`, intake writes under each genre's bucket).

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use object_store::{
    ObjectStore, ObjectStoreExt as _, PutPayload, aws::AmazonS3Builder, local::LocalFileSystem, path::Path,
};

use crate::config::Config;

#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Human-readable location, for logs and /health.
    location: String,
    /// The folder behind a local store, for the few local-only chores (clearing the staging
    /// files of writes interrupted by a crash).
    local_root: Option<std::path::PathBuf>,
    /// The same store, typed, when it is local: [`ObjectStorage::put`] writes new objects
    /// its own faster way (see there).
    local: Option<Arc<LocalFileSystem>>,
}

impl ObjectStorage {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        match &config.object_store_url {
            None => Self::local(&config.database.data_dir.join("objects")),
            Some(url) if url.starts_with("file://") => {
                let parsed = url::Url::parse(url).with_context(|| format!("OBJECT_STORE_URL `{url}` is not a URL"))?;
                let path = parsed
                    .to_file_path()
                    .map_err(|()| anyhow::anyhow!("OBJECT_STORE_URL `{url}` must be an absolute file:// path"))?;
                Self::local(&path)
            }
            Some(url) if url.starts_with("s3://") => {
                let store = AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .with_context(|| format!("OBJECT_STORE_URL `{url}`"))?;
                Ok(Self { store: Arc::new(store), location: url.clone(), local_root: None, local: None })
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
            local_root: Some(folder.to_path_buf()),
            local: Some(store),
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
            let file = local.path_to_filesystem(path)?;
            let content = bytes.clone();
            if tokio::task::spawn_blocking(move || local_fs::create_new(&file, &content)).await?? {
                return Ok(());
            }
        }
        self.store.put(path, PutPayload::from(bytes)).await?;
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The folder of a local store; `None` for S3-style stores.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
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

/// Local-folder writes that object_store has no call for.
#[cfg(target_os = "linux")]
mod local_fs {
    use std::{
        ffi::CString,
        fs::OpenOptions,
        io::{self, Write as _},
        os::{
            fd::AsRawFd as _,
            unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
        },
        path::Path,
    };

    /// Creates `file` with `content` if no file has that name: written unnamed in its folder,
    /// then linked under its name in one step, so the name never shows a partial file and
    /// a crash leaves nothing behind. `Ok(false)` when the name exists or the folder (or
    /// system) cannot do this; the caller then writes the usual way.
    pub fn create_new(file: &Path, content: &[u8]) -> io::Result<bool> {
        let Some(folder) = file.parent() else { return Ok(false) };
        // The permissions object_store's own files get (0o666 less the umask).
        let unnamed = match OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE).mode(0o666).open(folder) {
            Ok(unnamed) => unnamed,
            // No folder yet (object_store creates it), or no O_TMPFILE here.
            Err(error) if is_unsupported(&error) || error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error),
        };
        (&unnamed).write_all(content)?;
        let source = CString::new(format!("/proc/self/fd/{}", unnamed.as_raw_fd()))?;
        let target = CString::new(file.as_os_str().as_bytes())?;
        // SAFETY: both are valid NUL-terminated strings that outlive the call; `unnamed`
        // stays open until after it, so the descriptor the source names is ours.
        let linked = unsafe {
            libc::linkat(libc::AT_FDCWD, source.as_ptr(), libc::AT_FDCWD, target.as_ptr(), libc::AT_SYMLINK_FOLLOW)
        };
        if linked == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound => Ok(false), // NotFound: no /proc
            _ if is_unsupported(&error) => Ok(false),
            _ => Err(error),
        }
    }

    fn is_unsupported(error: &io::Error) -> bool {
        matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::EXDEV | libc::EPERM))
    }
}

#[cfg(not(target_os = "linux"))]
mod local_fs {
    /// Elsewhere, objects are always written object_store's way.
    pub fn create_new(_: &std::path::Path, _: &[u8]) -> std::io::Result<bool> {
        Ok(false)
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

        let mut names: Vec<String> = std::fs::read_dir(folder.path().join("romance"))
            .expect("bucket folder")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["A title.json", "B title.json"], "no staging or unnamed files left behind");
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
}
