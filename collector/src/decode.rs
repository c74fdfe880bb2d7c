//! Decoder: ring buffer bytes to typed kernel records.
//!
//! The bytes come from the kernel, but a version mismatch or a bug must not
//! crash the daemon: anything that does not decode is an error the caller
//! counts and skips.

use collector_common::{
    CgroupRecord, ExitRecord, Header, HealthRecord, OomRecord, SignalInfo, SignalRecord, SignaledExit, exit_flags, kind,
};
use thiserror::Error;

/// A record as the kernel sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelRecord {
    /// A process ended, with the signal that ended it where the kernel knew it.
    Exit(ExitRecord, Option<SignalInfo>),
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
    /// A node-health report; its header's kind says which.
    Health(HealthRecord),
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
        kind::EXIT => exit(bytes),
        kind::OOM_KILL => read(bytes, header.kind).map(KernelRecord::OomKill),
        kind::SIGNAL => read(bytes, header.kind).map(KernelRecord::Signal),
        kind::CGROUP_MKDIR => read(bytes, header.kind).map(KernelRecord::CgroupMkdir),
        kind::CGROUP_RMDIR => read(bytes, header.kind).map(KernelRecord::CgroupRmdir),
        kind::CGROUP_ATTACH => read(bytes, header.kind).map(KernelRecord::CgroupAttach),
        kind::HUNG_TASK..=kind::HW_ERROR => read(bytes, header.kind).map(KernelRecord::Health),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// An exit record: the bare [`ExitRecord`], or a [`SignaledExit`] where its flags say so.
fn exit(bytes: &[u8]) -> Result<KernelRecord, DecodeError> {
    let exit: ExitRecord = read(bytes, kind::EXIT)?;
    if exit.flags & exit_flags::SIGNAL_KNOWN == 0 {
        return Ok(KernelRecord::Exit(exit, None));
    }
    let signaled: SignaledExit = read(bytes, kind::EXIT)?;
    Ok(KernelRecord::Exit(signaled.exit, Some(signaled.signal)))
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

/// Types that are valid for any bytes, which [`read`] relies on.
///
/// # Safety
///
/// Implement it only for `#[repr(C)]` types made of integers and byte arrays,
/// with every padding byte an explicit field: any bit pattern is then a value.
unsafe trait Pod {}
// SAFETY: collector-common's records are `#[repr(C)]`, integers and byte arrays
// only, with explicit `_pad` fields; its size assertions check the layout.
unsafe impl Pod for Header {}
// SAFETY: as above.
unsafe impl Pod for ExitRecord {}
// SAFETY: as above.
unsafe impl Pod for SignaledExit {}
// SAFETY: as above.
unsafe impl Pod for OomRecord {}
// SAFETY: as above.
unsafe impl Pod for SignalRecord {}
// SAFETY: as above.
unsafe impl Pod for CgroupRecord {}
// SAFETY: as above.
unsafe impl Pod for HealthRecord {}

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
        }
    }

    #[test]
    fn decodes_an_exit_record_at_any_alignment() {
        let record = exit_record();
        let mut buf = vec![0u8];
        buf.extend(bytes_of(&record));
        assert_eq!(decode(&buf[1..]), Ok(KernelRecord::Exit(record, None)));
    }

    #[test]
    fn an_exit_that_says_its_signal_is_known_carries_it_after_the_exit() {
        let mut exit = exit_record();
        exit.flags = exit_flags::SIGNAL_KNOWN | exit_flags::NS_INIT;
        exit.exit_status = 9;
        let signal = SignalInfo {
            sender_cgroup_id: 91,
            sig: 9,
            code: 0,
            sender_pid: 77,
            target_pid: 4242,
            group: 1,
            result: 0,
            sender_comm: *b"kubelet\0\0\0\0\0\0\0\0\0",
            target_comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let record = SignaledExit { exit, signal };
        // SAFETY: SignaledExit has no padding, so every byte is initialised.
        let bytes =
            unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&record).cast::<u8>(), size_of::<SignaledExit>()) };
        assert_eq!(decode(bytes), Ok(KernelRecord::Exit(exit, Some(signal))));
        // A signaled exit cut to the bare exit's size is short, not an exit without its sender.
        assert_eq!(decode(&bytes[..64]), Err(DecodeError::Short { kind: kind::EXIT, len: 64, expected: 128 }));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let bytes = bytes_of(&exit_record());
        assert_eq!(decode(&bytes[..20]), Err(DecodeError::Short { kind: kind::EXIT, len: 20, expected: 64 }));
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

    mod properties {
        use collector_common::{COMM_LEN, EXE_LEN, OomScope, PATH_CAP};
        use proptest::{collection::vec, prelude::*};

        use super::*;

        /// The bytes of any record, whatever its type: valid because every record type is
        /// `#[repr(C)]` with no implicit padding (checked by collector-common's size asserts).
        fn raw_bytes<T: Pod>(record: &T) -> Vec<u8> {
            // SAFETY: no padding, so all size_of::<T>() bytes are initialised.
            unsafe { std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), size_of::<T>()) }.to_vec()
        }

        /// The bytes of a decoded record, to compare with what went in.
        fn bytes_of_record(record: &KernelRecord) -> Vec<u8> {
            match record {
                KernelRecord::Exit(r, None) => raw_bytes(r),
                KernelRecord::Exit(r, Some(signal)) => raw_bytes(&SignaledExit { exit: *r, signal: *signal }),
                KernelRecord::OomKill(r) => raw_bytes(r),
                KernelRecord::Signal(r) => raw_bytes(r),
                KernelRecord::CgroupMkdir(r) | KernelRecord::CgroupRmdir(r) | KernelRecord::CgroupAttach(r) => {
                    raw_bytes(r)
                }
                KernelRecord::Health(r) => raw_bytes(r),
            }
        }

        /// Writes fields one by one, in declaration order and native byte order, as the kernel
        /// program does: independent of the struct layout the decoder relies on.
        #[derive(Default)]
        struct Writer(Vec<u8>);
        impl Writer {
            fn u32(mut self, v: u32) -> Self {
                self.0.extend(v.to_ne_bytes());
                self
            }
            fn i32(mut self, v: i32) -> Self {
                self.0.extend(v.to_ne_bytes());
                self
            }
            fn u64(mut self, v: u64) -> Self {
                self.0.extend(v.to_ne_bytes());
                self
            }
            fn bytes(mut self, v: &[u8]) -> Self {
                self.0.extend_from_slice(v);
                self
            }
            fn header(self, h: &Header) -> Self {
                self.u32(h.kind).u32(h._pad).u64(h.boot_ns)
            }
            fn signal(self, s: &SignalInfo) -> Self {
                self.u64(s.sender_cgroup_id)
                    .u32(s.sig)
                    .i32(s.code)
                    .u32(s.sender_pid)
                    .u32(s.target_pid)
                    .u32(s.group)
                    .u32(s.result)
                    .bytes(&s.sender_comm)
                    .bytes(&s.target_comm)
            }
        }

        fn header(kind: u32) -> impl Strategy<Value = Header> {
            (any::<u32>(), any::<u64>()).prop_map(move |(_pad, boot_ns)| Header { kind, _pad, boot_ns })
        }

        fn signal_info() -> impl Strategy<Value = SignalInfo> {
            let ids =
                (any::<u64>(), any::<u32>(), any::<i32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>());
            (ids, any::<[u8; COMM_LEN]>(), any::<[u8; COMM_LEN]>()).prop_map(
                |((sender_cgroup_id, sig, code, sender_pid, target_pid, group, result), sender_comm, target_comm)| {
                    SignalInfo {
                        sender_cgroup_id,
                        sig,
                        code,
                        sender_pid,
                        target_pid,
                        group,
                        result,
                        sender_comm,
                        target_comm,
                    }
                },
            )
        }

        /// Any record of a known kind with arbitrary field values, and its bytes written field by field.
        fn record() -> impl Strategy<Value = (KernelRecord, Vec<u8>)> {
            let exit = (header(kind::EXIT), any::<(u64, u32, u32, u32, u32)>(), any::<[u8; COMM_LEN]>())
                .prop_flat_map(|parts| (Just(parts), any::<(u32, u32)>(), signal_info()))
                .prop_map(|((header, (cgroup_id, pid, ppid, tid, exit_status), comm), (flags, _pad), signal)| {
                    let r = ExitRecord { header, cgroup_id, pid, ppid, tid, exit_status, comm, flags, _pad };
                    let w = Writer::default().header(&header).u64(cgroup_id).u32(pid).u32(ppid).u32(tid);
                    let w = w.u32(exit_status).bytes(&comm).u32(flags).u32(_pad);
                    if flags & exit_flags::SIGNAL_KNOWN == 0 {
                        return (KernelRecord::Exit(r, None), w.0);
                    }
                    (KernelRecord::Exit(r, Some(signal)), w.signal(&signal).0)
                });
            let signal =
                (header(kind::SIGNAL), signal_info(), any::<[u8; EXE_LEN]>()).prop_map(|(header, info, sender_exe)| {
                    let w = Writer::default().header(&header).signal(&info).bytes(&sender_exe);
                    (KernelRecord::Signal(SignalRecord { header, info, sender_exe }), w.0)
                });
            let oom = (
                header(kind::OOM_KILL),
                any::<(u32, u32, u64, u64, u64, u64)>(),
                any::<(i32, u32, u64, u64, u64)>(),
                any::<([u8; COMM_LEN], [u8; COMM_LEN])>(),
            )
                .prop_map(
                    |(
                        header,
                        (victim_pid, flags, total_vm_kb, anon_rss_kb, file_rss_kb, shmem_rss_kb),
                        (oom_score_adj, trigger_pid, trigger_cgroup_id, memcg_id, limit_pages),
                        (trigger_comm, victim_comm),
                    )| {
                        let r = OomRecord {
                            header,
                            victim_pid,
                            flags,
                            total_vm_kb,
                            anon_rss_kb,
                            file_rss_kb,
                            shmem_rss_kb,
                            oom_score_adj,
                            trigger_pid,
                            trigger_cgroup_id,
                            trigger_comm,
                            victim_comm,
                            scope: OomScope { memcg_id, limit_pages },
                        };
                        let w = Writer::default().header(&header).u32(victim_pid).u32(flags).u64(total_vm_kb);
                        let w = w.u64(anon_rss_kb).u64(file_rss_kb).u64(shmem_rss_kb).i32(oom_score_adj);
                        let w = w.u32(trigger_pid).u64(trigger_cgroup_id).bytes(&trigger_comm).bytes(&victim_comm);
                        (KernelRecord::OomKill(r), w.u64(memcg_id).u64(limit_pages).0)
                    },
                );
            let cgroup_kind =
                prop_oneof![Just(kind::CGROUP_MKDIR), Just(kind::CGROUP_RMDIR), Just(kind::CGROUP_ATTACH)];
            let cgroup = (
                cgroup_kind.prop_flat_map(header),
                any::<(u64, u32, u32, u32, u32)>(),
                any::<[u8; COMM_LEN]>(),
                vec(any::<u8>(), PATH_CAP),
            )
                .prop_map(|(header, (cgroup_id, level, pid, path_len, _pad), comm, path_bytes)| {
                    let mut path = [0; PATH_CAP];
                    path.copy_from_slice(&path_bytes);
                    let r = CgroupRecord { header, cgroup_id, level, pid, path_len, _pad, comm, path };
                    let w = Writer::default().header(&header).u64(cgroup_id).u32(level).u32(pid).u32(path_len);
                    let w = w.u32(_pad).bytes(&comm).bytes(&path);
                    let record = match header.kind {
                        kind::CGROUP_MKDIR => KernelRecord::CgroupMkdir(r),
                        kind::CGROUP_RMDIR => KernelRecord::CgroupRmdir(r),
                        _ => KernelRecord::CgroupAttach(r),
                    };
                    (record, w.0)
                });
            prop_oneof![exit, signal, oom, cgroup]
        }

        /// What `decode` must say about `bytes`, from the sizes alone.
        fn expected_error(bytes: &[u8]) -> Option<DecodeError> {
            let Some(kind_bytes) = bytes.get(..16).and_then(|header| header.get(..4)) else {
                return Some(DecodeError::Short { kind: 0, len: bytes.len(), expected: 16 });
            };
            let kind = u32::from_ne_bytes(kind_bytes.try_into().unwrap());
            let expected = match kind {
                // The bare exit first; then its flags (bytes 56..60) say whether the signal follows.
                kind::EXIT if bytes.len() < 64 => 64,
                kind::EXIT => {
                    let flags = u32::from_ne_bytes(bytes[56..60].try_into().unwrap());
                    if flags & exit_flags::SIGNAL_KNOWN != 0 { 128 } else { 64 }
                }
                kind::OOM_KILL => 120,
                kind::SIGNAL => 112,
                kind::CGROUP_MKDIR | kind::CGROUP_RMDIR | kind::CGROUP_ATTACH => 56 + PATH_CAP,
                kind::HUNG_TASK..=kind::HW_ERROR => 368,
                other => return Some(DecodeError::UnknownKind(other)),
            };
            (bytes.len() < expected).then_some(DecodeError::Short { kind, len: bytes.len(), expected })
        }

        /// Random bytes whose first word is usually a known kind (or a near one), so every branch
        /// is reached, at every length up to a little past the largest record.
        fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
            let kind = prop_oneof![4 => 0..=12_u32, 1 => any::<u32>()];
            (kind, vec(any::<u8>(), 0..700), any::<bool>()).prop_map(|(kind, mut bytes, set_kind)| {
                if set_kind && bytes.len() >= 4 {
                    bytes[..4].copy_from_slice(&kind.to_ne_bytes());
                }
                bytes
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any bytes: no panic, and the outcome is exactly what the sizes and the kind dictate;
            /// a record that decodes is a bit-for-bit copy of the front of the bytes.
            #[test]
            fn any_bytes_decode_or_fail_as_their_size_and_kind_say(bytes in hostile_bytes()) {
                match decode(&bytes) {
                    Ok(record) => {
                        prop_assert_eq!(expected_error(&bytes), None);
                        let front = bytes_of_record(&record);
                        prop_assert_eq!(&bytes[..front.len()], &front[..]);
                    }
                    Err(err) => prop_assert_eq!(Some(err), expected_error(&bytes)),
                }
            }

            /// A record written field by field decodes to exactly those fields, at any alignment
            /// and with any bytes after it (ring buffer items are rounded up to 8 bytes).
            #[test]
            fn records_built_from_fields_decode_to_the_same_fields(
                (record, bytes) in record(),
                offset in 0..8_usize,
                tail in vec(any::<u8>(), 0..16),
            ) {
                prop_assert_eq!(bytes.len(), bytes_of_record(&record).len());
                let mut buf = vec![0xa5; offset];
                buf.extend_from_slice(&bytes);
                buf.extend_from_slice(&tail);
                prop_assert_eq!(decode(&buf[offset..]), Ok(record));
                // One byte short is never a record.
                let short = &buf[offset..offset + bytes.len() - 1];
                prop_assert_eq!(decode(short).map_err(|err| matches!(err, DecodeError::Short { .. })), Err(true));
            }
        }
    }
}
