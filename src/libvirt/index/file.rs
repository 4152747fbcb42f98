//! The persistent MAC index: a small file per libvirt URI in the cache
//! directory, so a freshly activated process can go straight to the right
//! domain instead of reading every domain's XML.
//!
//! The file is a hint, never the truth: a host confirms a hit against the
//! domain's current XML before acting. A file that does not parse, or
//! belongs to another URI or format, is ignored and replaced.
//!
//! Format: three header lines (format, URI, time of the last full scan in
//! seconds since 1970, or `never`), then one fixed-width record per (MAC,
//! domain UUID) pair, sorted: `52:54:00:aa:bb:cc 6695eb01-…-97f2502e193f`.
//! The MAC is any a packet finds the domain by, an interface's or an extra
//! one from its metadata (`mac add`): a record is the same either way, so
//! the format kept its version (a file written before a domain had extra
//! MACs lacks them, as it lacks a NIC added since: a full scan finds both).
//! A domain without NICs is recorded with the MAC `00:00:00:00:00:00` (never
//! a magic packet's target), so a fresh process knows it was read. A lookup
//! binary-searches the records with positioned reads, so a warm wake reads a
//! few hundred bytes whatever the number of domains.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::MacIndex;
use crate::model::Mac;
use crate::model::Uuid;
use crate::store::{CacheDirSource, DirError, file_name, write_atomically};

/// First line of every index file; a different one means another format.
const HEADER: &str = "wol-libvirt-gateway mac-index 3";
/// `xx:xx:xx:xx:xx:xx` + space + canonical UUID + newline.
const MAC_LEN: usize = 17;
const UUID_LEN: usize = 36;
const RECORD_LEN: usize = MAC_LEN + 1 + UUID_LEN + 1;
/// The header is read in one go; a longer URI makes the file unusable.
const MAX_HEADER: usize = 4096;
/// The MAC of a "known domain without NICs" record.
const NO_NIC: Mac = Mac([0; 6]);

/// Why the index file cannot be used (it is then ignored and rewritten).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading it failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// It has fewer than three header lines.
    #[error("no header")]
    NoHeader,
    /// Its first line names another format (or version).
    #[error("not a mac-index version 3 file")]
    OtherFormat,
    /// It was written for another libvirt URI (a hash collision, or a copy).
    #[error("it belongs to another URI ({0})")]
    OtherUri(String),
    /// The full-scan line is not `full-scan SECONDS` or `full-scan never`.
    #[error("malformed full-scan line")]
    BadScanTime,
    /// Its length is not a whole number of records.
    #[error("truncated record")]
    Truncated,
    /// A record is not `MAC UUID`.
    #[error("record {0} is malformed")]
    BadRecord(usize),
}

/// The index file for one libvirt URI.
#[derive(Debug, Clone)]
pub struct IndexFile {
    path: PathBuf,
    uri: String,
}

/// The header of an index file that belongs to this URI.
struct Header {
    len: usize,
    scanned: Option<SystemTime>,
}

impl IndexFile {
    /// The index file for `uri` in the chosen directory. Our own XDG
    /// directory is created if missing; a directory named by systemd or
    /// `--cache-dir` must exist.
    pub fn open(source: &CacheDirSource, uri: &str) -> Result<IndexFile, DirError> {
        let dir = source.checked()?;
        Ok(IndexFile {
            path: dir.join(file_name("mac-index", uri)),
            uri: uri.to_owned(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file and checks its header; `None` when there is no file.
    fn open_checked(&self) -> Result<Option<(fs::File, Header, usize)>, FileError> {
        let mut file = match fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| FileError::Truncated)?;
        let mut head = Vec::with_capacity(MAX_HEADER.min(len));
        (&mut file).take(MAX_HEADER as u64).read_to_end(&mut head)?;
        let header = self.header(&head)?;
        let body = len - header.len;
        if body % RECORD_LEN != 0 {
            return Err(FileError::Truncated);
        }
        Ok(Some((file, header, body / RECORD_LEN)))
    }

    /// The UUIDs of the domains that owned `mac` when the file was written.
    /// `Ok(None)` when there is no file yet.
    pub fn lookup(&self, mac: Mac) -> Result<Option<Vec<Uuid>>, FileError> {
        let Some((file, header, count)) = self.open_checked()? else {
            return Ok(None);
        };
        let records = Records {
            file: &file,
            start: header.len,
        };
        // First record whose MAC is not below the one wanted.
        let (mut low, mut high) = (0, count);
        while low < high {
            let middle = low + (high - low) / 2;
            if records.get(middle)?.0 < mac {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let mut owners = Vec::new();
        for i in low..count {
            let (found, uuid) = records.get(i)?;
            if found != mac {
                break;
            }
            owners.push(uuid);
        }
        Ok(Some(owners))
    }

    /// The whole index and the time of the last full scan; `Ok(None)` when
    /// there is no file yet.
    pub(crate) fn load(&self) -> Result<Option<(MacIndex, Option<SystemTime>)>, FileError> {
        let Some((file, header, count)) = self.open_checked()? else {
            return Ok(None);
        };
        let mut body = vec![0u8; count * RECORD_LEN];
        file.read_exact_at(&mut body, header.len as u64)?;
        let mut known = HashSet::new();
        let mut pairs = Vec::with_capacity(count);
        for (i, record) in body.chunks_exact(RECORD_LEN).enumerate() {
            let (mac, uuid) = parse_record(record).ok_or(FileError::BadRecord(i))?;
            known.insert(uuid);
            if mac != NO_NIC {
                pairs.push((mac, uuid));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        Ok(Some((MacIndex { known, pairs }, header.scanned)))
    }

    /// Checks the three header lines.
    fn header(&self, head: &[u8]) -> Result<Header, FileError> {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split_inclusive('\n');
        let (Some(format), Some(uri), Some(scan)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(FileError::NoHeader);
        };
        if format.trim_end() != HEADER {
            return Err(FileError::OtherFormat);
        }
        match uri.strip_prefix("uri ").map(str::trim_end) {
            Some(found) if found == one_line(&self.uri) => {}
            Some(found) => return Err(FileError::OtherUri(crate::libvirt::uri::shown(found))),
            None => return Err(FileError::NoHeader),
        }
        let scanned = match scan.strip_prefix("full-scan ").map(str::trim_end) {
            Some("never") => None,
            Some(secs) => {
                let secs: u64 = secs.parse().map_err(|_| FileError::BadScanTime)?;
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            }
            None => return Err(FileError::BadScanTime),
        };
        Ok(Header {
            len: format.len() + uri.len() + scan.len(),
            scanned,
        })
    }

    /// Writes the index atomically: a temporary file in the same directory,
    /// then a rename over the old one, so a reader never sees half a file.
    /// The temporary file has an unpredictable name and is created anew
    /// (`O_EXCL|O_NOFOLLOW`): a link planted in the directory is never
    /// followed, and nothing but a file of our own is ever written; the
    /// rename replaces a link at the index's path, never what it points to.
    pub(crate) fn store(&self, index: &MacIndex, scanned: Option<SystemTime>) -> io::Result<()> {
        let with_nics: HashSet<Uuid> = index.pairs().iter().map(|(_, uuid)| *uuid).collect();
        let mut records: Vec<(Mac, Uuid)> = index
            .domains()
            .filter(|uuid| !with_nics.contains(uuid))
            .map(|uuid| (NO_NIC, uuid))
            .chain(index.pairs().iter().copied())
            .collect();
        records.sort_unstable();
        let scan = scanned
            .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or_else(|| "never".to_owned(), |age| age.as_secs().to_string());
        // No fsync: after a crash a truncated file is only a corrupt hint,
        // which is ignored and rebuilt; the wake path should not wait on disk.
        write_atomically(&self.path, |out| {
            write!(
                out,
                "{HEADER}\nuri {}\nfull-scan {scan}\n",
                one_line(&self.uri)
            )?;
            for (mac, uuid) in &records {
                writeln!(out, "{mac} {uuid}")?;
            }
            Ok(())
        })
    }
}

/// The fixed-width records of an open index file.
struct Records<'a> {
    file: &'a fs::File,
    start: usize,
}

impl Records<'_> {
    /// Record `i`.
    fn get(&self, i: usize) -> Result<(Mac, Uuid), FileError> {
        let mut record = [0u8; RECORD_LEN];
        self.file
            .read_exact_at(&mut record, (self.start + i * RECORD_LEN) as u64)?;
        parse_record(&record).ok_or(FileError::BadRecord(i))
    }
}

/// `MAC UUID\n`, exactly [`RECORD_LEN`] bytes.
fn parse_record(record: &[u8]) -> Option<(Mac, Uuid)> {
    let text = std::str::from_utf8(record).ok()?;
    let (mac, rest) = text.split_at_checked(MAC_LEN)?;
    let uuid = rest.strip_prefix(' ')?.strip_suffix('\n')?;
    Some((mac.parse().ok()?, uuid.parse().ok()?))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u128) -> Uuid {
        Uuid(n)
    }

    fn mac(i: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, i])
    }

    fn file_in(dir: &Path, uri: &str) -> IndexFile {
        IndexFile::open(&CacheDirSource::Flag(dir.into()), uri).expect("usable directory")
    }

    fn lookup(file: &IndexFile, m: Mac) -> Option<Vec<Uuid>> {
        file.lookup(m).expect("a valid file")
    }

    #[test]
    fn lookups_find_every_owner_among_many_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = file_in(dir.path(), "qemu:///system");
        assert_eq!(lookup(&file, mac(1)), None, "no file yet");
        let mut domains: Vec<(Uuid, Vec<Mac>)> = vec![(uuid(1), (0..=250).map(mac).collect())];
        domains.push((uuid(2), vec![mac(7)]));
        domains.push((uuid(3), vec![]));
        file.store(&MacIndex::from_domains(domains), None)
            .expect("store");
        assert_eq!(lookup(&file, mac(7)), Some(vec![uuid(1), uuid(2)]));
        assert_eq!(lookup(&file, mac(0)), Some(vec![uuid(1)]));
        assert_eq!(lookup(&file, mac(250)), Some(vec![uuid(1)]));
        assert_eq!(lookup(&file, mac(251)), Some(vec![]));
        assert_eq!(lookup(&file, Mac([0x02, 0, 0, 0, 0, 1])), Some(vec![]));
    }

    #[test]
    fn a_loaded_index_is_the_stored_one_with_its_scan_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = file_in(dir.path(), "qemu:///system");
        let index = MacIndex::from_domains([
            (uuid(1), vec![mac(1), mac(2)]),
            (uuid(2), vec![]),
            (uuid(3), vec![mac(2)]),
        ]);
        let scanned = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        file.store(&index, Some(scanned)).expect("store");
        let (loaded, when) = file.load().expect("valid").expect("exists");
        assert_eq!(loaded, index);
        assert!(
            loaded.knows(uuid(2)),
            "a NIC-less domain survives the round trip"
        );
        assert_eq!(when, Some(scanned));
        file.store(&index, None).expect("store");
        assert_eq!(file.load().expect("valid").expect("exists").1, None);
    }

    #[test]
    fn foreign_or_corrupt_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = file_in(dir.path(), "x");
        let u1 = "00000000-0000-0000-0000-000000000001";
        let good = format!("{HEADER}\nuri x\nfull-scan never\n52:54:00:00:00:01 {u1}\n");
        for text in [
            String::new(),
            "garbage\n".into(),
            "wol-libvirt-gateway mac-index 2\nuri x\n".into(),
            format!("{HEADER}\nuri other:///\nfull-scan never\n"),
            format!("{HEADER}\nuri x\nfull-scan yesterday\n"),
            format!("{HEADER}\nuri x\nfull-scan never\nzz:zz:zz:zz:zz:zz {u1}\n"),
            format!("{HEADER}\nuri x\nfull-scan never\n52:54:00:00:00:01\n"),
            good[..good.len() - 1].to_owned(),
            "\u{ff}".repeat(5000),
        ] {
            std::fs::write(file.path(), &text).expect("write");
            assert!(file.lookup(mac(1)).is_err(), "{text:?}");
            assert!(file.load().is_err(), "{text:?}");
        }
        std::fs::write(file.path(), &good).expect("write");
        assert_eq!(lookup(&file, mac(1)), Some(vec![uuid(1)]));
    }

    #[test]
    fn a_link_planted_in_the_directory_is_never_followed() {
        // Security review, finding 4: the temporary file had a predictable
        // name and was opened with File::create, which follows a symlink and
        // truncates its target.
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = file_in(dir.path(), "qemu:///system");
        let victims = tempfile::tempdir().expect("tempdir");
        let (first, second) = (victims.path().join("a"), victims.path().join("b"));
        for victim in [&first, &second] {
            fs::write(victim, b"precious\n").expect("write");
        }
        // Where the old code wrote its temporary file, and the index itself.
        let old_tmp = file
            .path()
            .with_extension(format!("tmp.{}", std::process::id()));
        symlink(&first, old_tmp).expect("plant");
        symlink(&second, file.path()).expect("plant");
        let index = MacIndex::from_domains([(uuid(1), vec![mac(1)])]);
        file.store(&index, None).expect("store");
        for victim in [&first, &second] {
            assert_eq!(fs::read(victim).expect("read"), b"precious\n");
        }
        let written = fs::symlink_metadata(file.path()).expect("index");
        assert!(
            written.file_type().is_file(),
            "the link was replaced, not followed"
        );
        assert_eq!(lookup(&file, mac(1)), Some(vec![uuid(1)]));
    }

    #[test]
    fn a_directory_other_users_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o777, 0o1777, 0o775] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).expect("chmod");
            let refused = IndexFile::open(&CacheDirSource::Flag(dir.path().into()), "x")
                .expect_err("refused");
            let said = refused.to_string();
            assert!(said.contains("can be written by other users"), "{said}");
            assert!(!said.contains('\n'), "{said}");
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(IndexFile::open(&CacheDirSource::Flag(dir.path().into()), "x").is_ok());
    }

    #[test]
    fn our_own_cache_directory_is_made_for_this_user_alone() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join("cache").join(crate::store::APP_DIR);
        IndexFile::open(&CacheDirSource::Xdg(dir.clone()), "x").expect("made and usable");
        let mode = fs::metadata(&dir).expect("made").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
