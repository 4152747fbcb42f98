//! The persistent MAC index: a small file per libvirt URI in the cache
//! directory, so a freshly activated process can go straight to the right
//! domain instead of reading every domain's XML.
//!
//! The file is a hint, never the truth: the waker confirms a hit against the
//! domain's current XML before acting, and rescans (and rewrites the file) on
//! a miss or a stale hit. A file that does not parse, or belongs to another
//! URI or format, is ignored and replaced.
//!
//! Format: two header lines (format, URI), then one fixed-width record per
//! (MAC, domain UUID) pair, sorted: `52:54:00:aa:bb:cc 6695eb01-…-97f2502e193f`.
//! A lookup binary-searches the records with positioned reads, so a warm
//! wake reads a few hundred bytes whatever the number of domains.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::packet::Mac;

/// First line of every index file; a different one means another format.
const HEADER: &str = "wol-libvirt-gateway mac-index 2";
/// Directory name under the XDG cache directory.
const APP_DIR: &str = "wol-libvirt-gateway";
/// `xx:xx:xx:xx:xx:xx` + space + canonical UUID + newline.
const MAC_LEN: usize = 17;
const UUID_LEN: usize = 36;
const RECORD_LEN: usize = MAC_LEN + 1 + UUID_LEN + 1;
/// The header is read in one go; a longer URI makes the file unusable.
const MAX_HEADER: usize = 4096;

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

    /// The UUIDs of the domains that owned `mac` when the file was written.
    /// `Ok(None)` when there is no file yet; `Err` (with the reason) when
    /// it is corrupt or not ours.
    pub fn lookup(&self, mac: Mac) -> Result<Option<Vec<String>>, String> {
        let mut file = match fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        let mut head = Vec::with_capacity(MAX_HEADER.min(len));
        (&mut file)
            .take(MAX_HEADER as u64)
            .read_to_end(&mut head)
            .map_err(|e| e.to_string())?;
        let header_len = self.header_len(&head)?;
        let body = len - header_len;
        if body % RECORD_LEN != 0 {
            return Err("truncated record".into());
        }
        let records = Records {
            file: &file,
            start: header_len,
            count: body / RECORD_LEN,
        };
        // First record whose MAC is not below the one wanted.
        let wanted = mac.to_string();
        let (mut low, mut high) = (0, records.count);
        while low < high {
            let middle = low + (high - low) / 2;
            if records.get(middle)?.0 < wanted {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let mut owners = Vec::new();
        for i in low..records.count {
            let (found, uuid) = records.get(i)?;
            if found != wanted {
                break;
            }
            owners.push(uuid);
        }
        Ok(Some(owners))
    }

    /// Checks the two header lines; returns their length.
    fn header_len(&self, head: &[u8]) -> Result<usize, String> {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split_inclusive('\n');
        let (Some(format), Some(uri)) = (lines.next(), lines.next()) else {
            return Err("no header".into());
        };
        if format.trim_end() != HEADER {
            return Err("not a mac-index version 2 file".into());
        }
        match uri.strip_prefix("uri ").map(str::trim_end) {
            Some(found) if found == one_line(&self.uri) => Ok(format.len() + uri.len()),
            Some(found) => Err(format!("it belongs to another URI ({found})")),
            None => Err("no uri line".into()),
        }
    }

    /// Writes the index atomically: a temporary file in the same directory,
    /// then a rename over the old one, so a reader never sees half a file.
    pub fn store<'a>(&self, entries: impl IntoIterator<Item = (Mac, &'a str)>) -> io::Result<()> {
        let mut records: Vec<(Mac, &str)> = entries
            .into_iter()
            // libvirt's UUIDs are canonical; anything else cannot be a record.
            .filter(|(_, uuid)| uuid.len() == UUID_LEN && uuid.is_ascii())
            .collect();
        records.sort_unstable();
        records.dedup();
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        // No fsync: after a crash a truncated file is only a corrupt hint,
        // which is ignored and rebuilt; the wake path should not wait on disk.
        let written = fs::File::create(&tmp).and_then(|file| {
            let mut out = io::BufWriter::new(file);
            write!(out, "{HEADER}\nuri {}\n", one_line(&self.uri))?;
            for (mac, uuid) in &records {
                writeln!(out, "{mac} {uuid}")?;
            }
            out.into_inner().map_err(io::IntoInnerError::into_error)?;
            Ok(())
        });
        match written.and_then(|()| fs::rename(&tmp, &self.path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

/// The fixed-width records of an open index file.
struct Records<'a> {
    file: &'a fs::File,
    start: usize,
    count: usize,
}

impl Records<'_> {
    /// Record `i` as (MAC text, UUID).
    fn get(&self, i: usize) -> Result<(String, String), String> {
        let mut record = [0u8; RECORD_LEN];
        self.file
            .read_exact_at(&mut record, (self.start + i * RECORD_LEN) as u64)
            .map_err(|e| e.to_string())?;
        let text = std::str::from_utf8(&record).map_err(|_| format!("record {i} is not text"))?;
        let (mac, rest) = text.split_at(MAC_LEN);
        let uuid = rest
            .strip_prefix(' ')
            .and_then(|r| r.strip_suffix('\n'))
            .filter(|_| mac.parse::<Mac>().is_ok())
            .ok_or_else(|| format!("record {i} is malformed"))?;
        Ok((mac.to_owned(), uuid.to_owned()))
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

    const U1: &str = "6695eb01-f6a4-8304-79aa-97f2502e1931";
    const U2: &str = "6695eb01-f6a4-8304-79aa-97f2502e1932";

    fn mac(i: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, i])
    }

    fn file_in(dir: &Path, uri: &str) -> IndexFile {
        IndexFile::open(&CacheDirSource::Flag(dir.into()), uri).unwrap()
    }

    #[test]
    fn lookups_find_every_owner_among_many_records() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(dir.path(), "qemu:///system");
        assert_eq!(file.lookup(mac(1)), Ok(None), "no file yet");
        let mut entries: Vec<(Mac, &str)> = (0..=250).map(|i| (mac(i), U1)).collect();
        entries.push((mac(7), U2));
        file.store(entries).unwrap();
        assert_eq!(
            file.lookup(mac(7)),
            Ok(Some(vec![U1.to_owned(), U2.to_owned()]))
        );
        assert_eq!(file.lookup(mac(0)), Ok(Some(vec![U1.to_owned()])));
        assert_eq!(file.lookup(mac(250)), Ok(Some(vec![U1.to_owned()])));
        assert_eq!(file.lookup(mac(251)), Ok(Some(vec![])));
        assert_eq!(file.lookup(Mac([0x02, 0, 0, 0, 0, 1])), Ok(Some(vec![])));
    }

    #[test]
    fn foreign_or_corrupt_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(dir.path(), "x");
        let good = format!("{HEADER}\nuri x\n52:54:00:00:00:01 {U1}\n");
        for text in [
            String::new(),
            "garbage\n".into(),
            "wol-libvirt-gateway mac-index 1\nuri x\n".into(),
            format!("{HEADER}\nuri other:///\n"),
            format!("{HEADER}\nuri x\nzz:zz:zz:zz:zz:zz {U1}\n"),
            format!("{HEADER}\nuri x\n52:54:00:00:00:01\n"),
            good[..good.len() - 1].to_owned(),
            "\u{ff}".repeat(5000),
        ] {
            std::fs::write(file.path(), &text).unwrap();
            assert!(file.lookup(mac(1)).is_err(), "{text:?}");
        }
        std::fs::write(file.path(), &good).unwrap();
        assert_eq!(file.lookup(mac(1)), Ok(Some(vec![U1.to_owned()])));
    }

    #[test]
    fn different_uris_get_different_files() {
        assert_ne!(file_name("qemu:///system"), file_name("qemu:///session"));
    }
}
