//! tracefs: where it is mounted, and the field layout of a tracepoint.
//!
//! Tracepoint layouts change between kernels (`sched_process_exit` gained
//! `group_dead`; `oom/mark_victim` gained everything but `pid` in 6.9), so
//! offsets come from the running kernel's format files, never from the build.

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where tracefs is mounted when nobody says otherwise.
pub const DEFAULT_MOUNT: &str = "/sys/kernel/tracing";

/// Errors finding tracefs or reading a format file.
#[derive(Debug, Error)]
pub enum TracefsError {
    /// tracefs is not mounted and mounting it failed.
    #[error(
        "tracefs is not mounted and cannot be mounted at {DEFAULT_MOUNT}: {source} \
         (run `mount -t tracefs tracefs {DEFAULT_MOUNT}` as root)"
    )]
    Mount {
        /// Why mount(2) failed.
        #[source]
        source: std::io::Error,
    },
    /// A format file could not be read: the tracepoint does not exist here.
    #[error("cannot read tracepoint format {path}: {source}")]
    Read {
        /// The format file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A field line of a format file could not be parsed.
    #[error("tracepoint format {path} has a malformed line: {line:?}")]
    Malformed {
        /// The format file.
        path: PathBuf,
        /// The line that did not parse.
        line: String,
    },
}

/// A field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Offset in bytes from the start of the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// The fields of one tracepoint, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    fields: HashMap<String, Field>,
}

impl Format {
    /// Parses the text of a `format` file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TracefsError> {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let malformed = || TracefsError::Malformed { path: path.to_owned(), line: line.to_owned() };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().ok_or_else(malformed)?;
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            let (Some(offset), Some(size)) = (offset, size) else {
                return Err(malformed());
            };
            let name = field_name(decl).ok_or_else(malformed)?;
            fields.insert(name.to_owned(), Field { offset, size });
        }
        Ok(Self { fields })
    }

    /// The field called `name`, if this kernel has it.
    pub fn field(&self, name: &str) -> Option<Field> {
        self.fields.get(name).copied()
    }
}

/// The name in a C declaration such as `char comm[16]` or `__data_loc char[] path`.
fn field_name(decl: &str) -> Option<&str> {
    let last = decl.rsplit([' ', '*']).next()?;
    let name = last.split('[').next()?;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(name)
}

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs in the mount table, mounting it at [`DEFAULT_MOUNT`] if it is absent.
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        if let Some(found) = Self::find() {
            return Ok(found);
        }
        mount_default().map_err(|source| TracefsError::Mount { source })?;
        Ok(Self { root: PathBuf::from(DEFAULT_MOUNT) })
    }

    /// Finds tracefs in the mount table; mounts nothing.
    pub fn find() -> Option<Self> {
        mounted().map(|root| Self { root })
    }

    /// Where it is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the format of `category/name`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = self.root.join("events").join(category).join(name).join("format");
        let text =
            std::fs::read_to_string(&path).map_err(|source| TracefsError::Read { path: path.clone(), source })?;
        Format::parse(&text, &path)
    }
}

/// The first tracefs mount point in this process's mount table.
fn mounted() -> Option<PathBuf> {
    crate::mountinfo::find_fstype(&std::fs::read_to_string("/proc/self/mountinfo").ok()?, "tracefs")
}

fn mount_default() -> std::io::Result<()> {
    let target = CString::new(DEFAULT_MOUNT).map_err(std::io::Error::other)?;
    let fstype = CString::new("tracefs").map_err(std::io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_6_18: &str = "name: sched_process_exit
ID: 312
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: \"comm=%s pid=%d prio=%d group_dead=%s\", REC->comm, REC->pid, REC->prio, REC->group_dead ? \"true\" : \"false\"
";

    #[test]
    fn parses_the_fields_of_sched_process_exit() {
        let format = Format::parse(EXIT_6_18, Path::new("f")).unwrap();
        assert_eq!(format.field("comm"), Some(Field { offset: 8, size: 16 }));
        assert_eq!(format.field("pid"), Some(Field { offset: 24, size: 4 }));
        assert_eq!(format.field("group_dead"), Some(Field { offset: 32, size: 1 }));
        assert_eq!(format.field("common_pid"), Some(Field { offset: 4, size: 4 }));
        assert_eq!(format.field("nope"), None);
    }

    #[test]
    fn the_6_1_layout_has_no_group_dead() {
        let old = EXIT_6_18.replace("\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n", "");
        assert_eq!(Format::parse(&old, Path::new("f")).unwrap().field("group_dead"), None);
    }

    #[test]
    fn names_data_loc_and_pointer_fields() {
        assert_eq!(field_name("__data_loc char[] path"), Some("path"));
        assert_eq!(field_name("const char * name"), Some("name"));
        assert_eq!(field_name("u64 id"), Some("id"));
        assert_eq!(field_name(""), None);
    }

    #[test]
    fn a_malformed_line_is_an_error_that_quotes_it() {
        let err = Format::parse("\tfield:int x;\toffset:zz;\tsize:4;\n", Path::new("/t/format")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tracepoint format /t/format has a malformed line: \"field:int x;\\toffset:zz;\\tsize:4;\""
        );
    }
}
