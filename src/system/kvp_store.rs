//! The key-value pools on disk: one file per pool under `STATE_DIR/kvp/`, replaced as a whole by writing a
//! temporary file, fsyncing it, renaming it over the pool and fsyncing the directory. A crash or power loss
//! at any point leaves either the previous pool or the new one, never a torn one; a leftover temporary file
//! is removed at start.
//!
//! File format (little-endian): the magic `HVKVP1\n\0`, u32 pair count, then per pair u32 value_type,
//! u32 key length in UTF-16 units, the units, u32 value length in bytes, the value. A file that does not
//! parse exactly is moved aside to `pool_N.corrupt` and the pool starts empty.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hvproto::service::guestinfo::{Pair, PoolStore, MAX_PAIRS};
use hvproto::wire::kvp::{Pool, MAX_KEY_SIZE, MAX_VALUE_SIZE};

const MAGIC: &[u8; 8] = b"HVKVP1\n\0";

/// Pools as files in a directory.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Pools under `state_dir/kvp`; the directory is made (mode 0700) when first needed.
    pub fn new(state_dir: &Path) -> FileStore {
        FileStore {
            dir: state_dir.join("kvp"),
        }
    }

    pub fn path(&self, pool: Pool) -> PathBuf {
        self.dir.join(format!("pool_{}", pool.0))
    }

    fn temp_path(&self, pool: Pool) -> PathBuf {
        self.dir.join(format!("pool_{}.tmp", pool.0))
    }

    /// The first half of a save: the new pool written and fsynced beside the old one.
    pub fn write_temp(&self, pool: Pool, pairs: &[Pair]) -> std::io::Result<PathBuf> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let temp = self.temp_path(pool);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&encode(pairs))?;
        file.sync_all()?;
        Ok(temp)
    }

    /// The second half: the new pool renamed over the old one, and the rename made durable.
    pub fn commit(&self, pool: Pool, temp: &Path) -> std::io::Result<()> {
        fs::rename(temp, self.path(pool))?;
        File::open(&self.dir)?.sync_all()
    }
}

impl PoolStore for FileStore {
    fn load(&mut self, pool: Pool) -> Result<Vec<Pair>, String> {
        let _ = fs::remove_file(self.temp_path(pool));
        let path = self.path(pool);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        decode(&bytes).ok_or_else(|| {
            let aside = path.with_extension("corrupt");
            let moved = fs::rename(&path, &aside).is_ok();
            format!(
                "{} is not a pool file{}",
                path.display(),
                if moved {
                    format!(" (moved to {})", aside.display())
                } else {
                    String::new()
                }
            )
        })
    }

    fn save(&mut self, pool: Pool, pairs: &[Pair]) -> Result<(), String> {
        // A write to a frozen filesystem would block the loop until the thaw, which the loop itself must
        // perform: refused instead, and the host may set the pair again once thawed.
        if crate::ops::log_hold::frozen() {
            return Err(
                "filesystems are frozen for a backup; nothing is written until the thaw"
                    .to_string(),
            );
        }
        let temp = self
            .write_temp(pool, pairs)
            .map_err(|error| format!("cannot write {}: {error}", self.temp_path(pool).display()))?;
        self.commit(pool, &temp)
            .map_err(|error| format!("cannot replace {}: {error}", self.path(pool).display()))
    }
}

/// The file form of a pool.
pub fn encode(pairs: &[Pair]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for pair in pairs {
        out.extend_from_slice(&pair.value_type.to_le_bytes());
        out.extend_from_slice(&(pair.key.len() as u32).to_le_bytes());
        for unit in &pair.key {
            out.extend_from_slice(&unit.to_le_bytes());
        }
        out.extend_from_slice(&(pair.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&pair.value);
    }
    out
}

/// Reads bytes off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, tail) = self.0.split_at(len);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// A pool from its file form; None unless the bytes are exactly a valid pool within the wire bounds.
pub fn decode(bytes: &[u8]) -> Option<Vec<Pair>> {
    let mut reader = Reader(bytes);
    if reader.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let count = reader.u32()? as usize;
    if count > MAX_PAIRS {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let value_type = reader.u32()?;
        let key_len = reader.u32()? as usize;
        if key_len == 0 || key_len > MAX_KEY_SIZE / 2 {
            return None;
        }
        let key = hvproto::wire::utf16le_units(reader.take(key_len * 2)?).collect();
        let value_len = reader.u32()? as usize;
        if value_len > MAX_VALUE_SIZE {
            return None;
        }
        let value = reader.take(value_len)?.to_vec();
        pairs.push(Pair {
            key,
            value_type,
            value,
        });
    }
    reader.0.is_empty().then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, value: &[u8]) -> Pair {
        Pair {
            key: key.encode_utf16().collect(),
            value_type: 1,
            value: value.to_vec(),
        }
    }

    #[test]
    fn pools_survive_a_new_store_on_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path());
        assert_eq!(store.load(Pool::EXTERNAL).unwrap(), vec![]);
        let pairs = vec![pair("a", b"1"), pair("b", &[0xff; 2048])];
        store.save(Pool::EXTERNAL, &pairs).unwrap();
        store.save(Pool::GUEST, &[pair("g", b"")]).unwrap();
        let mut again = FileStore::new(dir.path());
        assert_eq!(again.load(Pool::EXTERNAL).unwrap(), pairs);
        assert_eq!(again.load(Pool::GUEST).unwrap(), vec![pair("g", b"")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(store.path(Pool::EXTERNAL))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_crash_between_write_and_rename_leaves_the_previous_pool() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path());
        store.save(Pool::EXTERNAL, &[pair("old", b"1")]).unwrap();
        // The new pool is written and synced, then the agent dies before the rename.
        let temp = store
            .write_temp(Pool::EXTERNAL, &[pair("new", b"2"), pair("x", b"3")])
            .unwrap();
        assert!(temp.exists());
        drop(store);
        let mut restarted = FileStore::new(dir.path());
        assert_eq!(
            restarted.load(Pool::EXTERNAL).unwrap(),
            vec![pair("old", b"1")]
        );
        assert!(!temp.exists(), "the leftover temporary file is removed");
        // A torn temporary file (cut mid-way) changes nothing either.
        let bytes = encode(&[pair("new", b"2")]);
        fs::write(&temp, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(
            restarted.load(Pool::EXTERNAL).unwrap(),
            vec![pair("old", b"1")]
        );
    }

    #[test]
    fn a_corrupt_pool_file_is_moved_aside_and_the_pool_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path());
        store.save(Pool::GUEST, &[pair("a", b"1")]).unwrap();
        let path = store.path(Pool::GUEST);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let error = store.load(Pool::GUEST).unwrap_err();
        assert!(error.contains("not a pool file"), "{error}");
        assert!(path.with_extension("corrupt").exists());
        assert_eq!(store.load(Pool::GUEST).unwrap(), vec![]);
    }

    #[test]
    fn decode_refuses_anything_but_an_exact_pool() {
        let good = encode(&[pair("k", b"v")]);
        assert!(decode(&good).is_some());
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode(&extra).is_none());
        assert!(decode(b"HVKVP1\n\0").is_none());
        assert!(decode(b"").is_none());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_none());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn nothing_is_saved_while_filesystems_are_frozen() {
        use crate::ops::log_hold;
        let _serial = log_hold::TEST_HOLD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path());
        log_hold::hold();
        let refused = store.save(Pool::EXTERNAL, &[pair("a", b"1")]);
        log_hold::release_into(&mut Vec::new());
        assert!(refused.unwrap_err().contains("frozen"));
        assert!(!store.path(Pool::EXTERNAL).exists());
        store.save(Pool::EXTERNAL, &[pair("a", b"1")]).unwrap();
        assert_eq!(store.load(Pool::EXTERNAL).unwrap(), [pair("a", b"1")]);
    }

    #[test]
    fn a_save_to_an_unwritable_place_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"").unwrap();
        let mut store = FileStore::new(&file);
        let error = store.save(Pool::EXTERNAL, &[pair("a", b"1")]).unwrap_err();
        assert!(error.contains("cannot write"), "{error}");
    }
}
