//! Writing one large object piece by piece, as its bytes arrive (the uploads' spool), in
//! memory bounded by a few blocks whatever the object's size. The object appears whole
//! at `finish` or not at all; an unnamed local file (below) is on the device by then,
//! data and name, as the upload's "queued" promises.
//!
//! A local folder gets the bytes in 4 MiB blocks on a blocking thread, written to an
//! unnamed file with `O_DIRECT` and named at the end: the page-cache copy of a buffered
//! write took a third of the machine while a gigabyte arrived (bench/uploads.sh), and
//! the device's own copy costs this machine's cores nothing. Other stores (and systems
//! without unnamed files) get object_store's multipart upload.

use std::{io, path::PathBuf};

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt as _, WriteMultipart, path::Path};
use tokio::{sync::mpsc, task::JoinHandle};

use super::local_fs::{DIRECT_ALIGN, Unnamed, sync_folder_of};

/// Multipart part size: S3's minimum for all but the last part is 5 MiB.
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Multipart parts being written while the next one fills.
const PARTS_IN_FLIGHT: usize = 2;
/// Local block size, a multiple of [`DIRECT_ALIGN`].
const BLOCK_SIZE: usize = 4 * 1024 * 1024;
/// Local blocks in all: one filling, the others being written.
const BLOCKS: usize = 3;

pub struct ObjectWriter(Inner);

enum Inner {
    Local(LocalWriter),
    Multipart(WriteMultipart),
}

impl ObjectWriter {
    /// Starts an object at `file` (the local path of a new name) when `folder` can hold an
    /// unnamed file; `None` otherwise.
    pub(super) fn local(folder: &std::path::Path, file: PathBuf) -> io::Result<Option<Self>> {
        Ok(Unnamed::create(folder, true)?.map(|unnamed| Self(Inner::Local(LocalWriter::start(unnamed, file)))))
    }

    pub(super) async fn multipart(store: &dyn ObjectStore, path: &Path) -> object_store::Result<Self> {
        let upload = store.put_multipart(path).await?;
        Ok(Self(Inner::Multipart(WriteMultipart::new_with_chunk_size(upload, PART_SIZE))))
    }

    /// Appends `chunk`; waits while the blocks (or parts) in flight are all busy.
    pub async fn write(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        match &mut self.0 {
            Inner::Local(local) => local.write(&chunk).await?,
            Inner::Multipart(multipart) => {
                multipart.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                multipart.put(chunk);
            }
        }
        Ok(())
    }

    /// Writes what is left and makes the object visible under its name; an unnamed local
    /// file is on the device (data and name) when this returns. (object_store's multipart
    /// fallback for a local folder without unnamed files does not sync.)
    pub async fn finish(self) -> anyhow::Result<()> {
        match self.0 {
            Inner::Local(local) => local.finish().await?,
            Inner::Multipart(multipart) => {
                multipart.finish().await?;
            }
        }
        Ok(())
    }

    /// Drops what was written: nothing appears under the name.
    pub async fn abort(self) -> anyhow::Result<()> {
        match self.0 {
            // The blocking side sees the channel close without a finish and drops the
            // unnamed file, which then vanishes.
            Inner::Local(local) => drop(local),
            Inner::Multipart(multipart) => multipart.abort().await?,
        }
        Ok(())
    }
}

/// A buffer whose bytes start at a [`DIRECT_ALIGN`]ed address.
struct Block {
    memory: Vec<u8>,
    start: usize,
    len: usize,
}

impl Block {
    fn new() -> Self {
        let memory = vec![0u8; BLOCK_SIZE + DIRECT_ALIGN];
        // At most DIRECT_ALIGN - 1 for bytes; a block that still came out unaligned is
        // written through the cache (`Unnamed::append` checks).
        let start = memory.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Self { memory, start, len: 0 }
    }

    /// Copies as much of `bytes` as fits; returns how much.
    fn fill(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(BLOCK_SIZE - self.len);
        let at = self.start + self.len;
        self.memory[at..at + taken].copy_from_slice(&bytes[..taken]);
        self.len += taken;
        taken
    }

    fn is_full(&self) -> bool {
        self.len == BLOCK_SIZE
    }

    fn bytes(&self) -> &[u8] {
        &self.memory[self.start..self.start + self.len]
    }
}

enum ToDisk {
    Block(Block),
    /// The last block, maybe partial (or empty); then the name.
    Finish(Block),
}

struct LocalWriter {
    filling: Block,
    /// Blocks made so far, up to [`BLOCKS`]; after that, written ones come back for reuse.
    made: usize,
    to_disk: mpsc::Sender<ToDisk>,
    written: mpsc::Receiver<Block>,
    disk: JoinHandle<io::Result<()>>,
}

impl LocalWriter {
    fn start(file: Unnamed, name: PathBuf) -> Self {
        let (to_disk, receive) = mpsc::channel(BLOCKS);
        let (give_back, written) = mpsc::channel(BLOCKS);
        let disk = tokio::task::spawn_blocking(move || write_blocks(file, &name, receive, give_back));
        Self { filling: Block::new(), made: 1, to_disk, written, disk }
    }

    async fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            bytes = &bytes[self.filling.fill(bytes)..];
            if self.filling.is_full() {
                let next = self.next_block().await?;
                let full = std::mem::replace(&mut self.filling, next);
                if self.to_disk.send(ToDisk::Block(full)).await.is_err() {
                    return Err(stopped_early(&mut self.disk).await);
                }
            }
        }
        Ok(())
    }

    async fn next_block(&mut self) -> io::Result<Block> {
        if self.made < BLOCKS {
            self.made += 1;
            return Ok(Block::new());
        }
        match self.written.recv().await {
            Some(mut block) => {
                block.len = 0;
                Ok(block)
            }
            None => Err(stopped_early(&mut self.disk).await),
        }
    }

    async fn finish(self) -> io::Result<()> {
        let Self { filling, to_disk, mut disk, .. } = self;
        if to_disk.send(ToDisk::Finish(filling)).await.is_err() {
            return Err(stopped_early(&mut disk).await);
        }
        drop(to_disk);
        disk.await.map_err(io::Error::other)?
    }
}

/// Why the blocking side stopped before the end (it only does on an error).
async fn stopped_early(disk: &mut JoinHandle<io::Result<()>>) -> io::Error {
    match disk.await {
        Ok(Err(error)) => error,
        Ok(Ok(())) => io::Error::other("the object writer stopped early"),
        Err(join) => io::Error::other(join),
    }
}

/// The blocking side: appends each block, gives it back, and names the file at the end.
/// Returns without naming it when the channel closes first (an abort).
fn write_blocks(
    mut file: Unnamed,
    name: &std::path::Path,
    mut blocks: mpsc::Receiver<ToDisk>,
    give_back: mpsc::Sender<Block>,
) -> io::Result<()> {
    while let Some(message) = blocks.blocking_recv() {
        match message {
            ToDisk::Block(block) => {
                file.append(block.bytes())?;
                // At most BLOCKS exist, so there is always room; a closed channel means the
                // writer was dropped and the next receive ends the loop.
                let _ = give_back.try_send(block);
            }
            ToDisk::Finish(block) => {
                file.append(block.bytes())?;
                // An upload is answered "queued" once its spool is finished: the bytes reach
                // the device before they get a name, and the name before we return, so not
                // even the machine's crash leaves a queued upload with part of its spool or
                // none. (About a millisecond here, once per object.)
                file.sync_data()?;
                if !file.link_as(name)? {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("could not name {}: the name is taken", name.display()),
                    ));
                }
                return sync_folder_of(name);
            }
        }
    }
    Ok(())
}
