//! Just enough of a BTF reader to find struct member offsets, and enumerators, in the running
//! kernel.
//!
//! Rust eBPF has no CO-RE relocations, so the kernel programs read
//! `task_struct` fields at offsets that this module takes from
//! `/sys/kernel/btf/vmlinux` at load time. aya-obj parses BTF too, but keeps
//! struct members private.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The first two bytes of little-endian BTF.
pub const MAGIC: u16 = 0xeb9f;
/// Why a blob that does not start with [`MAGIC`] is refused.
pub const BAD_MAGIC: &str = "bad magic (not little-endian BTF)";
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;

/// Errors reading kernel BTF.
#[derive(Debug, Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("cannot read kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        /// The file that was read.
        path: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF or is cut short.
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    /// A struct the probes need does not exist in this kernel.
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    /// A member the probes need does not exist in this kernel.
    #[error("kernel BTF has no member {member} in struct {strukt}")]
    NoMember {
        /// The struct searched.
        strukt: String,
        /// The member that was missing.
        member: String,
    },
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Composite {
    members: Vec<Member>,
}

/// The structs and unions of one BTF blob, indexed by type id.
#[derive(Debug)]
pub struct Btf {
    strings: Vec<u8>,
    composites: HashMap<u32, Composite>,
    /// Type ids of modifiers and typedefs, to see through to a composite.
    aliases: HashMap<u32, u32>,
    by_name: HashMap<String, u32>,
    /// The enumerators' names (string offsets) of each named enum, by its name.
    enums: HashMap<String, Vec<u32>>,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads BTF from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |off: usize| data.get(off..off + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |off: usize| data.get(off..off + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Malformed(BAD_MAGIC));
        }
        let field = |off| u32_at(off).ok_or(BtfError::Malformed("header cut short"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut btf = Self {
            strings,
            composites: HashMap::new(),
            aliases: HashMap::new(),
            by_name: HashMap::new(),
            enums: HashMap::new(),
        };
        let rd = |off: usize| {
            types
                .get(off..off + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(BtfError::Malformed("type cut short"))
        };
        let mut off = 0;
        let mut id = 1u32;
        while off < types.len() {
            let name_off = rd(off)?;
            let info = rd(off + 4)?;
            let size_or_type = rd(off + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            off += 12;
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,          // array
                KIND_STRUCT | KIND_UNION => vlen * 12,
                6 | 13 => vlen * 8,        // enum, func_proto
                15 | 19 => vlen * 12,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, modifiers, func, float, type_tag
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for m in 0..vlen {
                        let base = off + m * 12;
                        let raw_offset = rd(base + 8)?;
                        members.push(Member {
                            name_off: rd(base)?,
                            type_id: rd(base + 4)?,
                            // With kind_flag the top 8 bits hold a bitfield size.
                            bit_offset: if kind_flag { raw_offset & 0x00ff_ffff } else { raw_offset },
                        });
                    }
                    if kind == KIND_STRUCT && name_off != 0 {
                        let name = btf.string(name_off).to_owned();
                        // The first definition wins; later ones are module duplicates.
                        btf.by_name.entry(name).or_insert(id);
                    }
                    btf.composites.insert(id, Composite { members });
                }
                KIND_ENUM | KIND_ENUM64 if name_off != 0 => {
                    let stride = if kind == KIND_ENUM { 8 } else { 12 };
                    let names = (0..vlen).map(|e| rd(off + e * stride)).collect::<Result<Vec<_>, _>>()?;
                    let name = btf.string(name_off).to_owned();
                    btf.enums.entry(name).or_insert(names);
                }
                8..=11 | 18 => {
                    btf.aliases.insert(id, size_or_type);
                }
                _ => {}
            }
            off += extra;
            id += 1;
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn resolve(&self, mut id: u32) -> u32 {
        // Bounded: a malformed alias cycle must not hang the loader.
        for _ in 0..32 {
            match self.aliases.get(&id) {
                Some(&next) => id = next,
                None => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct strukt`, looking inside anonymous members.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self.by_name.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.to_owned(), member: member.to_owned() })
    }

    /// Whether `enum enumeration` has an enumerator `name`: what the kernel offers, such as
    /// a BPF helper (`bpf_func_id`), shows there.
    pub fn has_enumerator(&self, enumeration: &str, name: &str) -> bool {
        self.enums.get(enumeration).is_some_and(|names| names.iter().any(|&off| self.string(off) == name))
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let composite = self.composites.get(&self.resolve(id))?;
        for m in &composite.members {
            let name = self.string(m.name_off);
            if name == member {
                return Some(m.bit_offset);
            }
            if name.is_empty()
                && depth < 8
                && let Some(inner) = self.find(m.type_id, member, depth + 1)
            {
                return Some(m.bit_offset + inner);
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; struct { int b; }; long c; }`, an int and
    /// `enum colour { red, blue }`.
    pub(crate) fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0colour\0red\0blue\0".to_vec();
        let (int, outer, a, b, c) = (1u32, 5u32, 11u32, 13u32, 15u32);
        let (colour, red, blue) = (17u32, 24u32, 28u32);
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        // [1] int, 4 bytes
        push(&[int, 1 << 24, 4, 32]);
        // [2] anonymous struct { int b; }
        push(&[0, (4 << 24) | 1, 4, b, 1, 0]);
        // [3] typedef to [2], to check aliases are followed
        push(&[0, 8 << 24, 2]);
        // [4] struct outer { int a @0; anon @32 bits; int c @64 bits }
        push(&[outer, (4 << 24) | 3, 16, a, 1, 0, 0, 3, 32, c, 1, 64]);
        // [5] enum colour { red = 0, blue = 1 }
        push(&[colour, (6 << 24) | 2, 4, red, 0, blue, 1]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
    }

    #[test]
    fn finds_enumerators_by_enum() {
        let btf = Btf::parse(&sample()).unwrap();
        assert!(btf.has_enumerator("colour", "red"));
        assert!(btf.has_enumerator("colour", "blue"));
        assert!(!btf.has_enumerator("colour", "green"));
        assert!(!btf.has_enumerator("outer", "a"));
    }

    #[test]
    fn missing_names_are_errors_that_say_which() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member_offset("outer", "zz").unwrap_err().to_string(),
            "kernel BTF has no member zz in struct outer"
        );
        assert_eq!(btf.member_offset("nope", "a").unwrap_err().to_string(), "kernel BTF has no struct nope");
    }

    #[test]
    fn truncated_blobs_are_errors_not_panics() {
        let blob = sample();
        for len in 0..blob.len() {
            let _ = Btf::parse(&blob[..len]);
        }
        assert!(matches!(Btf::parse(b"xx"), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn reads_this_kernel_task_struct() {
        let btf = match Btf::from_kernel() {
            Ok(btf) => btf,
            // A developer's machine may lack BTF; CI machines never do.
            Err(_) if std::env::var_os("CI").is_none() => return,
            Err(err) => panic!("CI machines have BTF: {err}"),
        };
        for member in ["tgid", "real_parent", "group_leader", "exit_code", "comm"] {
            btf.member_offset("task_struct", member).unwrap();
        }
        // Every kernel the project tests on (6.1, 6.18) has it; 5.8 to 5.10 do not.
        assert!(btf.has_enumerator("bpf_func_id", "BPF_FUNC_get_current_task_btf"));
        assert!(!btf.has_enumerator("bpf_func_id", "BPF_FUNC_no_such_helper"));
    }
}
