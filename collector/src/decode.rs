//! Decoder: ring buffer bytes to typed kernel records.
//!
//! The bytes come from the kernel, but a version mismatch or a bug must not
//! crash the daemon: anything that does not decode is an error the caller
//! counts and skips.

use collector_common::{CgroupRecord, ExitRecord, Header, OomRecord, SignalRecord, kind};
use thiserror::Error;

/// A record as the kernel sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelRecord {
    /// A process ended.
    Exit(ExitRecord),
    /// The OOM killer chose a victim.
    OomKill(OomRecord),
    /// A fatal signal was generated.
    Signal(SignalRecord),
    /// A cgroup was created.
    CgroupMkdir(CgroupRecord),
    /// A cgroup was removed.
    CgroupRmdir(CgroupRecord),
    /// A process moved into a cgroup.
    CgroupAttach(CgroupRecord),
}

/// Why a ring buffer item was not a record.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the record its kind names.
    #[error("record of kind {kind} is {len} bytes, expected {expected}")]
    Short {
        /// The kind in the header (0 if even the header was cut).
        kind: u32,
        /// Bytes received.
        len: usize,
        /// Bytes that kind needs.
        expected: usize,
    },
    /// A kind this build does not know.
    #[error("record of unknown kind {0}")]
    UnknownKind(u32),
}

/// Decodes one ring buffer item.
pub fn decode(bytes: &[u8]) -> Result<KernelRecord, DecodeError> {
    let header: Header = read(bytes, 0)?;
    match header.kind {
        kind::EXIT => read(bytes, header.kind).map(KernelRecord::Exit),
        kind::OOM_KILL => read(bytes, header.kind).map(KernelRecord::OomKill),
        kind::SIGNAL => read(bytes, header.kind).map(KernelRecord::Signal),
        kind::CGROUP_MKDIR => read(bytes, header.kind).map(KernelRecord::CgroupMkdir),
        kind::CGROUP_RMDIR => read(bytes, header.kind).map(KernelRecord::CgroupRmdir),
        kind::CGROUP_ATTACH => read(bytes, header.kind).map(KernelRecord::CgroupAttach),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Copies a `T` out of the front of `bytes`, which need not be aligned.
fn read<T: Copy + Pod>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() < expected {
        return Err(DecodeError::Short { kind, len: bytes.len(), expected });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes, and `Pod` types are
    // valid for any bit pattern.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Records that are valid for any bytes: integers and byte arrays, no padding.
trait Pod {}
impl Pod for Header {}
impl Pod for ExitRecord {}
impl Pod for OomRecord {}
impl Pod for SignalRecord {}
impl Pod for CgroupRecord {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The bytes the kernel would send for `record`.
    pub(crate) fn bytes_of(record: &ExitRecord) -> Vec<u8> {
        // SAFETY: ExitRecord has no padding, so every byte is initialised.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), size_of::<ExitRecord>()) }.to_vec()
    }

    pub(crate) fn exit_record() -> ExitRecord {
        ExitRecord {
            header: Header { kind: kind::EXIT, _pad: 0, boot_ns: 42 },
            cgroup_id: 5678,
            pid: 4242,
            ppid: 4200,
            tid: 4243,
            exit_status: 7 << 8,
            comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            flags: 0,
            _pad: 0,
            signal: collector_common::SignalInfo::NONE,
        }
    }

    #[test]
    fn decodes_an_exit_record_at_any_alignment() {
        let record = exit_record();
        let mut buf = vec![0u8];
        buf.extend(bytes_of(&record));
        assert_eq!(decode(&buf[1..]), Ok(KernelRecord::Exit(record)));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let bytes = bytes_of(&exit_record());
        assert_eq!(decode(&bytes[..20]), Err(DecodeError::Short { kind: kind::EXIT, len: 20, expected: 128 }));
        assert_eq!(decode(&bytes[..3]), Err(DecodeError::Short { kind: 0, len: 3, expected: 16 }));
        let mut unknown = bytes;
        unknown[0] = 99;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn never_panics_on_any_prefix_of_random_bytes() {
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
    }
}
