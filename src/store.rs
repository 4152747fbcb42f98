//! Files kept from one run to the next in the cache directory: the MAC
//! index (`crate::libvirt::index::file`) and the idle check's samples
//! (`crate::commands::idle`). The directory must be this user's alone, and
//! every file is replaced whole, never written in place.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Directory name under the XDG cache directory.
pub(crate) const APP_DIR: &str = "wol-libvirt-gateway";

/// Why the cache directory cannot hold our files.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Our own XDG directory could not be created.
    #[error("cannot create {dir}: {source}")]
    Create {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The named path is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// The named directory cannot be examined (missing, no permission).
    #[error("{dir}: {source}")]
    Unusable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Someone else may write into the directory: they could plant a link
    /// where the index is written, or an index that names the wrong domain.
    #[error(
        "{dir} can be written by other users (mode {mode:04o}, owner uid {owner}): use a \
         directory only this user (uid {me}) can write, e.g. chmod go-w {dir}"
    )]
    WritableByOthers {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
        /// This process's user.
        me: u32,
    },
}

/// Where the cache directory comes from, in order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDirSource {
    /// `$CACHE_DIRECTORY`, set by systemd's `CacheDirectory=`.
    Systemd(PathBuf),
    /// `--cache-dir`.
    Flag(PathBuf),
    /// `$XDG_CACHE_HOME/wol-libvirt-gateway` or `~/.cache/wol-libvirt-gateway`.
    Xdg(PathBuf),
}

impl CacheDirSource {
    /// The directory, unchecked: for reading what is shown, never acted on
    /// (`list` run by an admin reads the service's directory, not its own).
    pub(crate) fn path(&self) -> &Path {
        match self {
            CacheDirSource::Systemd(dir) | CacheDirSource::Flag(dir) | CacheDirSource::Xdg(dir) => {
                dir
            }
        }
    }

    /// The directory, checked: ours alone. Our own XDG directory is created
    /// if missing; a directory named by systemd or `--cache-dir` must exist.
    pub(crate) fn checked(&self) -> Result<PathBuf, DirError> {
        let dir = match self {
            CacheDirSource::Systemd(dir) | CacheDirSource::Flag(dir) => dir,
            CacheDirSource::Xdg(dir) => {
                // Ours alone, whatever the umask (see the check below).
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| DirError::Create {
                        dir: dir.clone(),
                        source,
                    })?;
                dir
            }
        };
        let meta = match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => meta,
            Ok(_) => return Err(DirError::NotADirectory(dir.clone())),
            Err(source) => {
                return Err(DirError::Unusable {
                    dir: dir.clone(),
                    source,
                });
            }
        };
        // Only this user (or root, who can do anything anyway) may write
        // there: group- or world-writable (sticky /tmp included: a planted
        // symlink needs no deleting) or someone else's directory is refused.
        let me = rustix::process::geteuid().as_raw();
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 || (meta.uid() != me && meta.uid() != 0) {
            return Err(DirError::WritableByOthers {
                dir: dir.clone(),
                mode,
                owner: meta.uid(),
                me,
            });
        }
        Ok(dir.clone())
    }
    /// Picks the directory: `$CACHE_DIRECTORY` (its first entry), else
    /// `flag`, else the XDG cache directory. `None` when there is no home.
    pub(crate) fn choose(
        cache_directory: Option<&str>,
        flag: Option<&Path>,
        xdg_cache_home: Option<&str>,
        home: Option<&str>,
    ) -> Option<CacheDirSource> {
        let non_empty = |s: &&str| !s.is_empty();
        if let Some(dir) = cache_directory
            .and_then(|dirs| dirs.split(':').next())
            .filter(non_empty)
        {
            return Some(CacheDirSource::Systemd(PathBuf::from(dir)));
        }
        if let Some(dir) = flag {
            return Some(CacheDirSource::Flag(dir.to_owned()));
        }
        let base = match (xdg_cache_home.filter(non_empty), home.filter(non_empty)) {
            (Some(xdg), _) => PathBuf::from(xdg),
            (None, Some(home)) => Path::new(home).join(".cache"),
            (None, None) => return None,
        };
        Some(CacheDirSource::Xdg(base.join(APP_DIR)))
    }

    /// Reads the process environment.
    pub(crate) fn from_env(flag: Option<&Path>) -> Option<CacheDirSource> {
        let var = |name| std::env::var(name).ok();
        CacheDirSource::choose(
            var("CACHE_DIRECTORY").as_deref(),
            flag,
            var("XDG_CACHE_HOME").as_deref(),
            var("HOME").as_deref(),
        )
    }
}

/// One file per URI and purpose, named by a hash of the URI (URIs hold `/`
/// and `:`); the URI inside the file guards against collisions.
pub(crate) fn file_name(purpose: &str, uri: &str) -> String {
    // FNV-1a, 64 bit: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uri.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{purpose}-{hash:016x}")
}

/// Writes `path` atomically: a temporary file in the same directory, then
/// a rename over the old one, so a reader never sees half a file. The
/// temporary file has an unpredictable name and is created anew
/// (`O_EXCL|O_NOFOLLOW`): a link planted in the directory is never
/// followed, and nothing but a file of our own is ever written; the rename
/// replaces a link at `path`, never what it points to. No fsync: every file
/// kept here is a hint that a truncated copy after a crash only costs.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp.{:016x}", u64::from_ne_bytes(random)));
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o644)
        .open(&tmp);
    let written = created.and_then(|file| {
        let mut out = io::BufWriter::new(file);
        write(&mut out)?;
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(())
    });
    match written.and_then(|()| fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_precedence_systemd_then_flag_then_xdg() {
        let flag = Path::new("/flag");
        assert_eq!(
            CacheDirSource::choose(
                Some("/var/cache/a:/var/cache/b"),
                Some(flag),
                None,
                Some("/root")
            ),
            Some(CacheDirSource::Systemd("/var/cache/a".into()))
        );
        assert_eq!(
            CacheDirSource::choose(None, Some(flag), Some("/xdg"), Some("/root")),
            Some(CacheDirSource::Flag("/flag".into()))
        );
        assert_eq!(
            CacheDirSource::choose(None, None, Some("/xdg"), Some("/root")),
            Some(CacheDirSource::Xdg("/xdg/wol-libvirt-gateway".into()))
        );
        assert_eq!(
            CacheDirSource::choose(Some(""), None, Some(""), Some("/home/u")),
            Some(CacheDirSource::Xdg(
                "/home/u/.cache/wol-libvirt-gateway".into()
            ))
        );
        assert_eq!(CacheDirSource::choose(None, None, None, None), None);
    }

    #[test]
    fn different_uris_and_purposes_get_different_files() {
        let name = |purpose, uri| file_name(purpose, uri);
        assert_ne!(
            name("mac-index", "qemu:///system"),
            name("mac-index", "qemu:///session")
        );
        assert_ne!(
            name("mac-index", "qemu:///system"),
            name("idle", "qemu:///system")
        );
    }
}
