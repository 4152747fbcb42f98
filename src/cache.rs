//! The persistent MAC index: a small file per libvirt URI in the cache
//! directory, so a freshly activated process can go straight to the right
//! domain instead of reading every domain's XML.
//!
//! The file is a hint, never the truth: the waker confirms a hit against the
//! domain's current XML before acting, and rescans (and rewrites the file) on
//! a miss or a stale hit. A file that does not parse, or belongs to another
//! URI or format, is ignored and replaced.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::index::DomainRef;
use crate::packet::Mac;

/// First line of every index file; a different one means another format.
const HEADER: &str = "wol-libvirt-gateway mac-index 1";
/// Directory name under the XDG cache directory.
const APP_DIR: &str = "wol-libvirt-gateway";

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
    /// Picks the directory: `$CACHE_DIRECTORY` (its first entry), else
    /// `flag`, else the XDG cache directory. `None` when there is no home.
    pub fn choose(
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
    pub fn from_env(flag: Option<&Path>) -> Option<CacheDirSource> {
        let var = |name| std::env::var(name).ok();
        CacheDirSource::choose(
            var("CACHE_DIRECTORY").as_deref(),
            flag,
            var("XDG_CACHE_HOME").as_deref(),
            var("HOME").as_deref(),
        )
    }
}

/// The index file for one libvirt URI.
#[derive(Debug, Clone)]
pub struct IndexFile {
    path: PathBuf,
    uri: String,
}

impl IndexFile {
    /// The index file for `uri` in the chosen directory. Our own XDG
    /// directory is created if missing; a directory named by systemd or
    /// `--cache-dir` must exist. The error says why the cache is off.
    pub fn open(source: &CacheDirSource, uri: &str) -> Result<IndexFile, String> {
        let dir = match source {
            CacheDirSource::Systemd(dir) | CacheDirSource::Flag(dir) => dir,
            CacheDirSource::Xdg(dir) => {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                dir
            }
        };
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", dir.display())),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
        Ok(IndexFile {
            path: dir.join(file_name(uri)),
            uri: uri.to_owned(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the index. `Ok(None)` when there is no file yet;
    /// `Err` (with the reason) when it is corrupt or not ours.
    pub fn load(&self) -> Result<Option<HashMap<Mac, Vec<DomainRef>>>, String> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        parse(&text, &self.uri).map(Some)
    }

    /// Writes the index atomically: a temporary file in the same directory,
    /// then a rename over the old one, so a reader never sees half a file.
    pub fn store<'a>(
        &self,
        entries: impl IntoIterator<Item = (Mac, &'a DomainRef)>,
    ) -> io::Result<()> {
        let mut text = format!("{HEADER}\nuri {}\n", one_line(&self.uri));
        for (mac, domain) in entries {
            text.push_str(&format!(
                "{mac} {} {}\n",
                one_line(&domain.uuid),
                one_line(&domain.name)
            ));
        }
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        // No fsync: after a crash a truncated file is only a corrupt hint,
        // which is ignored and rebuilt; the wake path should not wait on disk.
        let written = fs::File::create(&tmp).and_then(|mut file| file.write_all(text.as_bytes()));
        match written.and_then(|()| fs::rename(&tmp, &self.path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

/// One file per URI, named by a hash of it (URIs hold `/` and `:`); the URI
/// inside the file guards against collisions.
fn file_name(uri: &str) -> String {
    // FNV-1a, 64 bit: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uri.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("mac-index-{hash:016x}")
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn parse(text: &str, uri: &str) -> Result<HashMap<Mac, Vec<DomainRef>>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err("not a mac-index version 1 file".into());
    }
    match lines.next().and_then(|l| l.strip_prefix("uri ")) {
        Some(found) if found == one_line(uri) => {}
        Some(found) => return Err(format!("it belongs to another URI ({found})")),
        None => return Err("no uri line".into()),
    }
    let mut owners: HashMap<Mac, Vec<DomainRef>> = HashMap::new();
    for (number, line) in lines.enumerate() {
        let mut fields = line.splitn(3, ' ');
        let (Some(mac), Some(uuid), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("line {} is incomplete", number + 3));
        };
        let mac: Mac = mac
            .parse()
            .map_err(|_| format!("line {} has no MAC", number + 3))?;
        if uuid.is_empty() {
            return Err(format!("line {} has no UUID", number + 3));
        }
        owners.entry(mac).or_default().push(DomainRef {
            name: name.to_owned(),
            uuid: uuid.to_owned(),
        });
    }
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str) -> DomainRef {
        DomainRef {
            name: name.into(),
            uuid: format!("uuid-{}", name.replace(' ', "-")),
        }
    }

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
    fn round_trip_keeps_every_owner_and_names_with_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            IndexFile::open(&CacheDirSource::Flag(dir.path().into()), "qemu:///system").unwrap();
        assert_eq!(file.load(), Ok(None));
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let (a, b) = (domain("a b"), domain("c"));
        file.store([(mac, &a), (mac, &b)]).unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!(loaded[&mac], vec![a, b]);
    }

    #[test]
    fn foreign_or_corrupt_files_are_errors_not_panics() {
        for text in [
            "",
            "garbage\n",
            "wol-libvirt-gateway mac-index 2\nuri x\n",
            "wol-libvirt-gateway mac-index 1\nuri other:///\n",
            "wol-libvirt-gateway mac-index 1\nuri x\nzz:zz uuid name\n",
            "wol-libvirt-gateway mac-index 1\nuri x\n52:54:00:00:00:01\n",
        ] {
            assert!(parse(text, "x").is_err(), "{text:?}");
        }
    }

    #[test]
    fn different_uris_get_different_files() {
        assert_ne!(file_name("qemu:///system"), file_name("qemu:///session"));
    }
}
