//! Checking a library file before `dlopen` ever sees it.
//!
//! `dlopen` maps segments by the program headers; a page of a segment that
//! lies past the end of a truncated file raises SIGBUS when touched instead of
//! an error ([`docs::boundary`](crate::docs::boundary) §5). So the private copy is parsed first with the
//! `object` crate: it must be an ELF shared object for this machine, every
//! `PT_LOAD` segment and both header tables must lie inside the file, and the
//! dynamic symbol table must define exactly one Verdant descriptor. The last
//! check also means a foreign library is refused without running its
//! constructors.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader as _, Sym};
use object::{Endian, Endianness};

use crate::descriptor;
use crate::error::LoadError;

#[cfg(target_pointer_width = "64")]
type Header = elf::FileHeader64<Endianness>;
#[cfg(target_pointer_width = "64")]
type SectionHeader = elf::SectionHeader64<Endianness>;
#[cfg(target_pointer_width = "32")]
type Header = elf::FileHeader32<Endianness>;
#[cfg(target_pointer_width = "32")]
type SectionHeader = elf::SectionHeader32<Endianness>;

#[cfg(target_pointer_width = "64")]
const HOST_CLASS: u8 = elf::ELFCLASS64;
#[cfg(target_pointer_width = "32")]
const HOST_CLASS: u8 = elf::ELFCLASS32;

/// The ELF machine of this build's target.
const HOST_MACHINE: u16 = if cfg!(target_arch = "x86_64") {
    elf::EM_X86_64
} else if cfg!(target_arch = "aarch64") {
    elf::EM_AARCH64
} else if cfg!(target_arch = "riscv64") {
    elf::EM_RISCV
} else if cfg!(target_arch = "x86") {
    elf::EM_386
} else if cfg!(target_arch = "arm") {
    elf::EM_ARM
} else {
    elf::EM_NONE // unknown target: the machine check is skipped
};

/// Checks `bytes`, a whole artifact, and returns how many of its first
/// bytes `dlopen` needs: the ELF header, the program header table and every
/// segment (`PT_LOAD` and the others, which lie inside them) end within
/// them. The rest is section data that only debuggers and backtraces read,
/// by the file's name (see `loader::write_copy`).
pub(crate) fn validate(bytes: &[u8]) -> Result<usize, LoadError> {
    let (header, endian, loaded) = check_loaded_part(bytes, bytes.len() as u64)?;
    let sections =
        header.sections(endian, bytes).map_err(|e| truncated_or_malformed(bytes, "section header table", e))?;
    check_sections(&sections, endian, bytes.len() as u64)?;
    find_descriptor(&sections, endian, bytes)?;
    Ok(loaded)
}

/// Checks an artifact of `file_len` bytes of which only the first part and
/// the section header table were read ([`layout`]): `head`, the bytes that
/// `dlopen` needs, and `section_headers`, the table's bytes. The same checks
/// as [`validate`], on the same bytes: nothing it reads lies in the part not
/// read (the dynamic symbol table and its strings are loaded, so they lie in
/// `head`; a file where they do not is refused as malformed).
pub(crate) fn validate_parts(head: &[u8], file_len: u64, section_headers: &[u8]) -> Result<usize, LoadError> {
    let (_, endian, loaded) = check_loaded_part(head, file_len)?;
    if loaded != head.len() {
        return Err(LoadError::Malformed {
            detail: format!("the loaded part is {loaded} bytes long, but {} were read as such", head.len()),
        });
    }
    let headers = object::pod::slice_from_all_bytes::<SectionHeader>(section_headers)
        .map_err(|_| LoadError::Malformed { detail: "the section header table is not whole entries".to_owned() })?;
    // The section names are not needed: the dynamic symbol table is found by
    // its type, as `validate` finds it.
    let sections = object::read::elf::SectionTable::new(headers, object::StringTable::default());
    check_sections(&sections, endian, file_len)?;
    find_descriptor(&sections, endian, head)?;
    Ok(loaded)
}

/// Where the parts of an ELF file lie that a reload reads before loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// How many first bytes `dlopen` needs (as [`validate`] returns).
    pub loaded: u64,
    /// The section header table: its offset and length in bytes.
    pub section_headers: (u64, u64),
}

/// The layout of the ELF file of `file_len` bytes that starts with `start`,
/// when `start` holds its ELF header and program header table and both the
/// loaded part and the section header table lie inside the file.
///
/// `None` for anything else (not ELF, another word size, truncated, no or
/// extended section headers): such a file is read whole and [`validate`]
/// says precisely what is wrong with it.
#[allow(clippy::useless_conversion)] // u32 words on 32-bit targets
pub(crate) fn layout(start: &[u8], file_len: u64) -> Option<Layout> {
    if start.get(..4) != Some(b"\x7fELF".as_slice()) || start.get(4) != Some(&HOST_CLASS) {
        return None;
    }
    let header = Header::parse(start).ok()?;
    let endian = header.endian().ok()?;
    let mut loaded = headers_len(start)?;
    for segment in header.program_headers(endian, start).ok()? {
        loaded = loaded.max(u64::from(segment.p_offset(endian)).checked_add(segment.p_filesz(endian).into())?);
    }
    let offset: u64 = header.e_shoff(endian).into();
    let count = u64::from(header.e_shnum(endian));
    let entry = u64::from(header.e_shentsize(endian));
    // No table, or one whose count is in its first entry (65280 sections or
    // more), or entries of another size: read the file whole.
    if offset == 0 || count == 0 || entry != std::mem::size_of::<SectionHeader>() as u64 {
        return None;
    }
    let table_end = offset.checked_add(count * entry)?;
    (loaded <= file_len && table_end <= file_len).then_some(Layout { loaded, section_headers: (offset, count * entry) })
}

/// The checks of the header, the program header table and the loaded
/// segments of an artifact of `file_len` bytes that starts with `bytes`:
/// the header, its byte order, and how many first bytes `dlopen` needs.
// ELF words are u32 on 32-bit targets; the conversions are not useless there.
#[allow(clippy::useless_conversion)]
fn check_loaded_part(bytes: &[u8], file_len: u64) -> Result<(&Header, Endianness, usize), LoadError> {
    if bytes.is_empty() {
        return Err(LoadError::Empty);
    }
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        let shown: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(LoadError::NotElf { detail: format!("{} bytes starting with {}", bytes.len(), shown.join(" ")) });
    }
    if bytes.len() < 5 || bytes[4] != HOST_CLASS {
        let found = match bytes.get(4) {
            Some(&elf::ELFCLASS32) => "a 32-bit machine",
            Some(&elf::ELFCLASS64) => "a 64-bit machine",
            _ => "an unknown word size",
        };
        return Err(LoadError::WrongArchitecture { found: found.to_owned(), expected: host_name() });
    }
    let header = Header::parse(bytes).map_err(|e| truncated_or_malformed(bytes, "ELF header", e))?;
    let endian = header.endian().map_err(|e| LoadError::Malformed { detail: e.to_string() })?;
    if endian.is_little_endian() != cfg!(target_endian = "little") {
        return Err(LoadError::WrongArchitecture { found: "the other byte order".to_owned(), expected: host_name() });
    }
    let machine = header.e_machine(endian);
    if HOST_MACHINE != elf::EM_NONE && machine != HOST_MACHINE {
        return Err(LoadError::WrongArchitecture { found: machine_name(machine), expected: host_name() });
    }
    match header.e_type(endian) {
        elf::ET_DYN => {}
        elf::ET_EXEC => return Err(LoadError::NotSharedObject { found: "executable".to_owned() }),
        elf::ET_REL => {
            return Err(LoadError::NotSharedObject { found: "relocatable object (.o/.rlib member)".to_owned() })
        }
        elf::ET_CORE => return Err(LoadError::NotSharedObject { found: "core dump".to_owned() }),
        other => return Err(LoadError::NotSharedObject { found: format!("file of type {other}") }),
    }

    let len = file_len;
    // The header and the program header table (inside the file once
    // `program_headers` below parsed it), then every segment.
    let mut loaded = u64::from(header.e_phoff(endian))
        .saturating_add(u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian)))
        .max(std::mem::size_of::<Header>() as u64);
    let segments =
        header.program_headers(endian, bytes).map_err(|e| truncated_or_malformed(bytes, "program header table", e))?;
    if segments.is_empty() {
        return Err(LoadError::Malformed { detail: "no program headers".to_owned() });
    }
    for (index, segment) in segments.iter().enumerate() {
        let segment_end = u64::from(segment.p_offset(endian)).saturating_add(segment.p_filesz(endian).into());
        loaded = loaded.max(segment_end);
        if segment.p_type(endian) != elf::PT_LOAD {
            continue;
        }
        let start: u64 = segment.p_offset(endian).into();
        let size: u64 = segment.p_filesz(endian).into();
        let end = start.checked_add(size).ok_or_else(|| LoadError::Malformed {
            detail: format!("PT_LOAD segment {index} has an offset overflow"),
        })?;
        if end > len {
            return Err(LoadError::Truncated {
                detail: format!("PT_LOAD segment {index} needs bytes {start}..{end} but the file has {len} bytes"),
            });
        }
    }
    // A segment other than PT_LOAD may claim bytes past the end (dlopen
    // never reads those from the file); the copy holds at most the file.
    let loaded = usize::try_from(loaded.min(len)).unwrap_or(bytes.len());
    Ok((header, endian, loaded))
}

/// Every section with bytes in the file must end inside it: a file cut
/// after its section header table was written is not a whole build.
fn check_sections<'data>(
    sections: &object::read::elf::SectionTable<'data, Header, &'data [u8]>,
    endian: Endianness,
    file_len: u64,
) -> Result<(), LoadError> {
    for (index, section) in sections.iter().enumerate() {
        if let Some((offset, size)) = section.file_range(endian) {
            if offset.saturating_add(size) > file_len {
                return Err(LoadError::Truncated {
                    detail: format!(
                        "section {index} needs bytes {offset}..{} but the file has {file_len} bytes",
                        offset.saturating_add(size)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The dynamic symbol table (read from `bytes`) must define exactly one
/// Verdant descriptor, of this build's ABI.
fn find_descriptor<'data>(
    sections: &object::read::elf::SectionTable<'data, Header, &'data [u8]>,
    endian: Endianness,
    bytes: &'data [u8],
) -> Result<(), LoadError> {
    let symbols = sections
        .symbols(endian, bytes, elf::SHT_DYNSYM)
        .map_err(|e| truncated_or_malformed(bytes, "dynamic symbol table", e))?;
    let strings = symbols.strings();
    let mut descriptors = Vec::new();
    for symbol in symbols.iter() {
        if symbol.st_shndx(endian) == elf::SHN_UNDEF {
            continue;
        }
        let Ok(name) = symbol.name(endian, strings) else { continue };
        if name.starts_with(descriptor::SYMBOL_PREFIX.as_bytes()) {
            descriptors.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    match descriptors.as_slice() {
        [] => Err(LoadError::NotVerdant { symbol: descriptor::SYMBOL }),
        [only] if only == descriptor::SYMBOL => Ok(()),
        _ => Err(LoadError::DescriptorMismatch { found: descriptors, expected: descriptor::SYMBOL }),
    }
}

/// The file byte ranges of the `PT_LOAD` segments of the ELF file that
/// starts with `head` (which must hold its ELF header and program header
/// table): what `dlopen` maps from the file, as `(offset, offset + filesz)`.
/// `None` when `head` is not such a file (a copy is validated before it is
/// loaded, so this happens only for a head read too short).
#[allow(clippy::useless_conversion)] // u32 words on 32-bit targets
pub(crate) fn load_segments(head: &[u8]) -> Option<Vec<(u64, u64)>> {
    let header = Header::parse(head).ok()?;
    let endian = header.endian().ok()?;
    let segments = header.program_headers(endian, head).ok()?;
    Some(
        segments
            .iter()
            .filter(|segment| segment.p_type(endian) == elf::PT_LOAD)
            .map(|segment| {
                let start: u64 = segment.p_offset(endian).into();
                (start, start.saturating_add(segment.p_filesz(endian).into()))
            })
            .collect(),
    )
}

/// How many first bytes of a file hold its ELF header and program header
/// table, by the header at the start of `head`.
#[allow(clippy::useless_conversion)] // u32 words on 32-bit targets
pub(crate) fn headers_len(head: &[u8]) -> Option<u64> {
    let header = Header::parse(head).ok()?;
    let endian = header.endian().ok()?;
    let table = u64::from(header.e_phoff(endian))
        .checked_add(u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian)))?;
    Some(table.max(std::mem::size_of::<Header>() as u64))
}

/// A parse error of a table is a truncation when the table would start past
/// the end of the file; otherwise the file is malformed.
#[allow(clippy::useless_conversion)] // u32 words on 32-bit targets
fn truncated_or_malformed(bytes: &[u8], what: &str, error: object::read::Error) -> LoadError {
    let mut truncated = bytes.len() < std::mem::size_of::<Header>();
    if let Ok(header) = Header::parse(bytes) {
        if let Ok(endian) = header.endian() {
            let ph_end = u64::from(header.e_phoff(endian))
                + u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
            let sh_end = u64::from(header.e_shoff(endian))
                + u64::from(header.e_shnum(endian)) * u64::from(header.e_shentsize(endian));
            truncated = ph_end > bytes.len() as u64 || sh_end > bytes.len() as u64;
        }
    }
    if truncated {
        LoadError::Truncated {
            detail: format!("the {what} lies past the end of the file ({} bytes): {error}", bytes.len()),
        }
    } else {
        LoadError::Malformed { detail: format!("{what}: {error}") }
    }
}

fn host_name() -> String {
    format!("{} ({}-bit)", std::env::consts::ARCH, usize::BITS)
}

fn machine_name(machine: u16) -> String {
    match machine {
        elf::EM_X86_64 => "x86_64".to_owned(),
        elf::EM_AARCH64 => "aarch64".to_owned(),
        elf::EM_RISCV => "riscv".to_owned(),
        elf::EM_386 => "x86".to_owned(),
        elf::EM_ARM => "arm".to_owned(),
        other => format!("ELF machine {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary's own dependencies include shared objects; libc is
    /// one every Linux process has. Any well-formed shared object without a
    /// descriptor is "not a Verdant library".
    fn system_library() -> Option<Vec<u8>> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("libc.so"))?;
        std::fs::read(path).ok()
    }

    #[test]
    fn empty_random_and_foreign_files_are_refused_precisely() {
        assert!(matches!(validate(b""), Err(LoadError::Empty)));
        assert!(matches!(validate(b"#!/bin/sh\necho hi\n"), Err(LoadError::NotElf { .. })));
        let libc = system_library().expect("the test process maps libc");
        assert!(matches!(validate(&libc), Err(LoadError::NotVerdant { .. })), "{:?}", validate(&libc));
        let error = validate(&libc[..libc.len() / 3]).unwrap_err();
        assert!(matches!(error, LoadError::Truncated { .. }), "{error:?}");
    }

    #[test]
    #[allow(clippy::useless_conversion)] // u32 words on 32-bit targets
    fn the_loaded_part_ends_with_the_last_segment_not_the_debug_sections() {
        // A debug fixture built beside this test binary: line tables make it
        // about ten times larger than what dlopen maps.
        let exe = std::env::current_exe().expect("own path");
        let dir = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>");
        let bytes = std::fs::read(dir.join("libfixture_good_v1.so")).expect("run `cargo build --workspace` first");
        let loaded = validate(&bytes).expect("a valid library");
        let header = Header::parse(&*bytes).unwrap();
        let endian = header.endian().unwrap();
        let last_segment_end = header
            .program_headers(endian, &*bytes)
            .unwrap()
            .iter()
            .map(|s| u64::from(s.p_offset(endian)) + u64::from(s.p_filesz(endian)))
            .max()
            .unwrap();
        assert_eq!(loaded as u64, last_segment_end.min(bytes.len() as u64));
        if cfg!(debug_assertions) {
            assert!(loaded < bytes.len() / 2, "{loaded} of {} bytes", bytes.len());
        }
        // The truncated file still holds every segment.
        assert_eq!(validate_segments_only(&bytes[..loaded]), Ok(()));
    }

    /// The segment part of the checks on a copy cut after its segments (its
    /// section headers are gone, so the whole check does not apply).
    #[allow(clippy::useless_conversion)] // u32 words on 32-bit targets
    fn validate_segments_only(bytes: &[u8]) -> Result<(), String> {
        let header = Header::parse(bytes).map_err(|e| e.to_string())?;
        let endian = header.endian().map_err(|e| e.to_string())?;
        for segment in header.program_headers(endian, bytes).map_err(|e| e.to_string())? {
            if segment.p_type(endian) == elf::PT_LOAD
                && u64::from(segment.p_offset(endian)) + u64::from(segment.p_filesz(endian)) > bytes.len() as u64
            {
                return Err("a segment past the end".to_owned());
            }
        }
        Ok(())
    }

    #[test]
    fn an_executable_is_not_a_shared_object() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Rust test binaries are PIE, i.e. ET_DYN; patch e_type to ET_EXEC.
        let mut exe = exe;
        exe[16] = elf::ET_EXEC as u8;
        exe[17] = 0;
        assert!(matches!(validate(&exe), Err(LoadError::NotSharedObject { .. })));
    }
}
