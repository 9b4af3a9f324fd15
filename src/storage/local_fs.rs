//! Local-folder writes that object_store has no call for (Linux): a file is written
//! unnamed in its folder (`O_TMPFILE`) and linked under its name (`linkat`) only once it
//! is whole, so a name never shows a partial file and a crash leaves nothing behind.
//! Elsewhere every call answers "not here" and callers write object_store's way.

#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(not(target_os = "linux"))]
pub use other::*;

/// Alignment of direct (`O_DIRECT`) writes: of the memory, the length and the file offset.
/// 4 KiB is a multiple of every common logical block size.
pub const DIRECT_ALIGN: usize = 4096;

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        fs::{File, OpenOptions},
        io::{self, Write as _},
        os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
        path::Path,
    };

    use rustix::{
        fs::{AtFlags, CWD, OFlags},
        io::Errno,
    };

    use super::DIRECT_ALIGN;

    /// `open(2)` flags as std's `custom_flags` takes them.
    fn open_flags(flags: OFlags) -> i32 {
        i32::try_from(flags.bits()).unwrap_or(0)
    }

    /// A file being written in a folder, without a name yet.
    pub struct Unnamed {
        file: File,
        /// Writes bypass the page cache (`O_DIRECT`) while this holds.
        direct: bool,
    }

    impl Unnamed {
        /// Opens an unnamed file in `folder`; with `direct`, its writes go straight to the
        /// device when the file system allows it. `Ok(None)` when the folder is missing
        /// or the system cannot make unnamed files: the caller writes the usual way.
        pub fn create(folder: &Path, direct: bool) -> io::Result<Option<Self>> {
            let open = |flags| {
                // The permissions object_store's own files get (0o666 less the umask).
                OpenOptions::new()
                    .write(true)
                    .custom_flags(open_flags(OFlags::TMPFILE | flags))
                    .mode(0o666)
                    .open(folder)
            };
            let attempt = if direct { open(OFlags::DIRECT) } else { open(OFlags::empty()) };
            let (attempt, direct) = match attempt {
                // tmpfs and a few others refuse O_DIRECT with EINVAL: write through the cache.
                Err(error) if direct && is_errno(&error, Errno::INVAL) => (open(OFlags::empty()), false),
                other => (other, direct),
            };
            match attempt {
                Ok(file) => Ok(Some(Self { file, direct })),
                Err(error) if is_unsupported(&error) || error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error),
            }
        }

        /// Appends `bytes`. Direct writes need an aligned address, length and file offset:
        /// the aligned part of aligned memory goes direct, and whatever is left ends the
        /// direct writes (the file's length is no longer aligned after it), as does a device
        /// that refuses our alignment (EINVAL): from there on the file is written through
        /// the page cache.
        pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut done = 0;
            if self.direct && (bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
                let aligned = bytes.len() - bytes.len() % DIRECT_ALIGN;
                while done < aligned {
                    match (&self.file).write(&bytes[done..aligned]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(written) => done += written,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) if is_errno(&error, Errno::INVAL) => break,
                        Err(error) => return Err(error),
                    }
                }
            }
            if done < bytes.len() {
                self.end_direct()?;
                (&self.file).write_all(&bytes[done..])?;
            }
            Ok(())
        }

        fn end_direct(&mut self) -> io::Result<()> {
            if !self.direct {
                return Ok(());
            }
            let flags = rustix::fs::fcntl_getfl(&self.file)?;
            rustix::fs::fcntl_setfl(&self.file, flags - OFlags::DIRECT)?;
            self.direct = false;
            Ok(())
        }

        /// Waits until the file's bytes (and the metadata needed to read them) are on the
        /// device, as far as the device reports it.
        pub fn sync_data(&self) -> io::Result<()> {
            self.file.sync_data()
        }

        /// Gives the file its name. `Ok(false)` when `file` exists (it is left as it is) or
        /// the system cannot link an unnamed file; the content is then dropped.
        pub fn link_as(self, file: &Path) -> io::Result<bool> {
            // `self.file` stays open until after the call, so the descriptor named is ours.
            let source = format!("/proc/self/fd/{}", self.file.as_raw_fd());
            let Err(errno) = rustix::fs::linkat(CWD, source.as_str(), CWD, file, AtFlags::SYMLINK_FOLLOW) else {
                return Ok(true);
            };
            let error = io::Error::from(errno);
            match error.kind() {
                io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound => Ok(false), // NotFound: no /proc
                _ if is_unsupported(&error) => Ok(false),
                _ => Err(error),
            }
        }
    }

    /// Waits until the entries of the folder holding `file` (its name) are on the device.
    pub fn sync_folder_of(file: &Path) -> io::Result<()> {
        File::open(file.parent().unwrap_or(Path::new(".")))?.sync_all()
    }

    /// Creates `folder` and any missing parent so that they survive a machine's crash: the
    /// folder holding each one made is synced, as [`sync_folder_of`] does for a file.
    pub fn create_folder_synced(folder: &Path) -> io::Result<()> {
        if folder.is_dir() {
            return Ok(());
        }
        if let Some(parent) = folder.parent() {
            create_folder_synced(parent)?;
        }
        match std::fs::create_dir(folder) {
            // Made by a concurrent call: synced below all the same.
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => return Err(error),
            _ => {}
        }
        sync_folder_of(folder)
    }

    /// Creates `file` with `content` if no file has that name. `Ok(false)` when the name
    /// exists or the folder (or system) cannot do this; the caller then writes the usual way.
    pub fn create_new(file: &Path, content: &[u8]) -> io::Result<bool> {
        let Some(folder) = file.parent() else { return Ok(false) };
        let Some(mut unnamed) = Unnamed::create(folder, false)? else { return Ok(false) };
        unnamed.append(content)?;
        unnamed.link_as(file)
    }

    fn is_unsupported(error: &io::Error) -> bool {
        [Errno::OPNOTSUPP, Errno::ISDIR, Errno::INVAL, Errno::XDEV, Errno::PERM]
            .into_iter()
            .any(|errno| is_errno(error, errno))
    }

    fn is_errno(error: &io::Error, errno: Errno) -> bool {
        error.raw_os_error() == Some(errno.raw_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::{io, path::Path};

    /// Never made here: see the module's comment.
    pub enum Unnamed {}

    impl Unnamed {
        pub fn create(_: &Path, _: bool) -> io::Result<Option<Self>> {
            Ok(None)
        }

        pub fn append(&mut self, _: &[u8]) -> io::Result<()> {
            match *self {}
        }

        pub fn sync_data(&self) -> io::Result<()> {
            match *self {}
        }

        pub fn link_as(self, _: &Path) -> io::Result<bool> {
            match self {}
        }
    }

    pub fn sync_folder_of(_: &Path) -> io::Result<()> {
        Ok(())
    }

    pub fn create_folder_synced(folder: &Path) -> io::Result<()> {
        std::fs::create_dir_all(folder)
    }

    pub fn create_new(_: &Path, _: &[u8]) -> io::Result<bool> {
        Ok(false)
    }
}
