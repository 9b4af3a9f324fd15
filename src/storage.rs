//! Object storage through the `object_store` crate: a local folder in embedded mode, an
//! S3-style bucket in a cluster. Domains address "buckets" as top-level prefixes of the
//! configured root (uploads spool under `uploads/`, intake writes under each genre's bucket).

use std::sync::Arc;

use anyhow::Context as _;
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
                Ok(Self { store: Arc::new(store), location: url.clone(), local_root: None })
            }
            Some(url) => anyhow::bail!("OBJECT_STORE_URL `{url}`: use s3://bucket or file:///absolute/path"),
        }
    }

    pub fn local(folder: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create the object store folder {}", folder.display()))?;
        let store = LocalFileSystem::new_with_prefix(folder)
            .with_context(|| format!("cannot open the object store folder {}", folder.display()))?;
        Ok(Self {
            store: Arc::new(store),
            location: format!("file://{}", folder.display()),
            local_root: Some(folder.to_path_buf()),
        })
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
