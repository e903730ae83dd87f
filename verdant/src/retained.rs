//! What a retired version keeps for the life of the process, made as small
//! as it can be, and measured.
//!
//! An attached library is never unmapped ([`docs::boundary`](crate::docs::boundary)
//! §4), so every reload leaves its old version mapped for good. What that
//! mapping *costs* is another matter, and most of it can be given back once
//! no code of the version can run any more, except thread-local destructors
//! at thread exit (its `LoadedLibrary` is dropped: detached, no task, no
//! router or pin left):
//!
//! - **Resident pages of its read-only mappings** (code, read-only data):
//!   private, never written, backed by the copy, so `madvise(MADV_DONTNEED)`
//!   drops them and a later access (a TLS destructor running, a
//!   `&'static str` read) faults the very same bytes back in from the file.
//!   Writable mappings (`.data`, `.bss`, the GOT) and read-only ones that
//!   hold anonymous pages (RELRO, written by the dynamic linker before it was
//!   made read-only) are live state and are never touched.
//! - **Its page cache**, where the copy is on a disk: `posix_fadvise(
//!   POSIX_FADV_DONTNEED)` lets the kernel drop the clean pages no one maps.
//!   On a tmpfs the file's pages *are* its storage and stay (counted in
//!   [`RetainedSummary::file_bytes`]).
//! - **File space outside its loaded segments** (debug sections, symbol
//!   tables, section headers): holes are punched over every byte that no
//!   `PT_LOAD` segment's pages cover (`fallocate(FALLOC_FL_PUNCH_HOLE)`), so
//!   the unlinked copy holds at most what the loader maps. Backtraces through
//!   a retired version (a TLS destructor that panics) then lack file and line
//!   numbers. A filesystem that cannot punch holes is logged once, at debug.
//!
//! What stays: the page tables' bookkeeping (the mappings themselves), the
//! copy's loaded segments on the private directory's filesystem (RAM on a
//! tmpfs), the anonymous pages of its writable and RELRO mappings, and one
//! descriptor. [`Retained::summary`] measures it for `status()` and the
//! metrics, from `/proc/self/maps` and `/proc/self/pagemap` (read only
//! when asked, and `pagemap` only for the retired copies' ranges).

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::status::RetainedSummary;

/// The copies of every version of a registry whose library was released
/// ([`release`]): retired for good, still mapped, with the descriptor they
/// were loaded through (kept open for the life of the process, see
/// `loader.rs`).
#[derive(Debug, Default)]
pub(crate) struct Retained {
    copies: Mutex<Vec<RetainedCopy>>,
}

#[derive(Debug)]
struct RetainedCopy {
    /// Never closed: glibc knows the library by `/proc/self/fd/<this>`.
    file: ManuallyDrop<File>,
    id: FileId,
}

impl Retained {
    /// Records a released copy; its descriptor stays open for good.
    pub(crate) fn add(&self, file: ManuallyDrop<File>) {
        match file.metadata() {
            Ok(metadata) => self.copies.lock().push(RetainedCopy { id: FileId::of(&metadata), file }),
            Err(error) => tracing::debug!(%error, "cannot fstat a retained library copy; status() will not count it"),
        }
    }

    /// How many released versions are still mapped, the resident bytes of
    /// their mappings (`mappings`, from `/proc/self/maps`, measured here in
    /// `/proc/self/pagemap`), and the space their copies hold on the
    /// private directory's filesystem.
    pub(crate) fn summary(&self, mappings: &[Mapping]) -> RetainedSummary {
        let copies = self.copies.lock();
        let mut summary = RetainedSummary::default();
        let pagemap = PageMap::open();
        for copy in copies.iter() {
            let mut mapped = false;
            for mapping in mappings.iter().filter(|m| m.id == Some(copy.id)) {
                mapped = true;
                summary.rss_bytes += pagemap.as_ref().map_or(0, |pagemap| pagemap.measure(mapping).resident);
            }
            if mapped {
                summary.versions += 1;
            }
            // The descriptor holds the file whether it is mapped or not.
            if let Ok(metadata) = copy.file.metadata() {
                summary.file_bytes += metadata.blocks() * 512;
            }
        }
        summary
    }
}

/// A file as `/proc/self/maps` names it: device (major, minor) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    major: u32,
    minor: u32,
    inode: u64,
}

impl FileId {
    pub(crate) fn of(metadata: &std::fs::Metadata) -> FileId {
        let dev = metadata.dev();
        FileId { major: libc::major(dev), minor: libc::minor(dev), inode: metadata.ino() }
    }
}

/// One mapping of this process, from `/proc/self/maps`.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `r`, `w`, `x` and `p` (private) or `s` (shared), as the kernel shows them.
    pub perms: [u8; 4],
    /// The mapped file; `None` for anonymous mappings (inode 0).
    pub id: Option<FileId>,
    /// The file's path as the kernel shows it, without " (deleted)"; empty
    /// for an anonymous mapping.
    pub path: String,
}

impl Mapping {
    /// Private and not writable: a candidate for dropping its pages, if
    /// none of them is anonymous ([`Pages::anonymous`]).
    fn private_read_only(&self) -> bool {
        self.perms[1] != b'w' && self.perms[3] == b'p'
    }
}

/// What `/proc/self/pagemap` says about the pages of one mapping.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pages {
    /// Bytes of its pages in memory (what smaps calls `Rss`).
    pub resident: u64,
    /// Bytes of its pages that are no longer the file's (copied on write,
    /// in memory or swapped out): what smaps calls `Anonymous`.
    pub anonymous: u64,
}

/// `/proc/self/pagemap`: one 64-bit entry per virtual page. Read only for
/// the ranges asked about, which costs a few bytes per page, where
/// `/proc/self/smaps` walks the page tables of every mapping of the process
/// (130 ms for one read after 1000 reloads).
///
/// Bits used (the kernel's `admin-guide/mm/pagemap`): 63 present, 62
/// swapped, 61 a file page (or shared anonymous). A process may read its
/// own flags without privileges (only the frame numbers are hidden).
struct PageMap {
    file: File,
    page: u64,
}

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const FILE_PAGE: u64 = 1 << 61;

impl PageMap {
    fn open() -> Option<PageMap> {
        match File::open("/proc/self/pagemap") {
            Ok(file) => Some(PageMap { file, page: page_size() }),
            Err(error) => {
                debug_once(&PAGEMAP_REFUSED, "cannot open /proc/self/pagemap", &error);
                None
            }
        }
    }

    /// The pages of `mapping`; all zero when they cannot be read.
    fn measure(&self, mapping: &Mapping) -> Pages {
        let first = mapping.start / self.page;
        let count = mapping.end.saturating_sub(mapping.start) / self.page;
        let Ok(count) = usize::try_from(count) else { return Pages::default() };
        let mut entries = vec![0u8; count * 8];
        if let Err(error) = self.file.read_exact_at(&mut entries, first * 8) {
            debug_once(&PAGEMAP_REFUSED, "cannot read /proc/self/pagemap", &error);
            return Pages::default();
        }
        count_pages(&entries, self.page)
    }
}

/// Sums pagemap `entries` (8 bytes each, native order) of pages of `page` bytes.
fn count_pages(entries: &[u8], page: u64) -> Pages {
    let mut pages = Pages::default();
    for entry in entries.chunks_exact(8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(entry);
        let entry = u64::from_ne_bytes(bytes);
        if entry & PRESENT != 0 {
            pages.resident += page;
        }
        if entry & (PRESENT | SWAPPED) != 0 && entry & FILE_PAGE == 0 {
            pages.anonymous += page;
        }
    }
    pages
}

/// Every mapping of this process, from `/proc/self/maps` (empty when it
/// cannot be read).
///
/// Parsed here rather than with a `/proc` crate: the format is one line per
/// mapping and this reads five fields, while the crates that parse all of
/// `/proc` (procfs) would bring their own system-call layer into every host.
pub(crate) fn read_maps() -> Vec<Mapping> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    text.lines().filter_map(parse_header).collect()
}

/// `start-end perms offset major:minor inode   path`; the path may hold
/// spaces and ends in " (deleted)" once unlinked.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, char::is_whitespace);
    let (start, end) = fields.next()?.split_once('-')?;
    let perms: [u8; 4] = fields.next()?.as_bytes().try_into().ok()?;
    let _offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next().map(str::trim_start).unwrap_or("");
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let id = (inode != 0).then_some(FileId {
        major: u32::from_str_radix(major, 16).ok()?,
        minor: u32::from_str_radix(minor, 16).ok()?,
        inode,
    });
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        id,
        path: path.to_owned(),
    })
}

/// What [`release`] gave back, for its log line and the tests.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Released {
    /// Resident bytes dropped from read-only mappings.
    pub resident: u64,
    /// Bytes of the file punched out (allocated or not).
    pub punched: u64,
}

/// Gives back what a retired library's copy holds that can come back
/// unchanged (see the module docs): call it once no code of the library can
/// run except thread-local destructors, with the descriptor it was loaded
/// through (`file`) and, when still open, the one it was written through
/// (`writable`: hole punching needs a descriptor open for writing).
pub(crate) fn release(file: &File, writable: Option<&File>, copy: &Path) -> Released {
    let mut released = Released::default();
    let id = match file.metadata() {
        Ok(metadata) => FileId::of(&metadata),
        Err(error) => {
            tracing::debug!(copy = %copy.display(), %error, "cannot fstat a retired copy; nothing released");
            return released;
        }
    };
    if let Some(writable) = writable {
        released.punched = punch_unloaded(file, writable, copy);
    }
    let pagemap = PageMap::open();
    for mapping in read_maps().iter().filter(|m| m.id == Some(id) && m.private_read_only()) {
        let Some(pagemap) = &pagemap else { break };
        let pages = pagemap.measure(mapping);
        if pages.resident == 0 || pages.anonymous != 0 {
            continue;
        }
        let Ok(length) = usize::try_from(mapping.end.saturating_sub(mapping.start)) else { continue };
        // SAFETY: the range is a whole mapping of this retired copy, private
        // and read-only, with no anonymous page (checked just above, from
        // pagemap): every resident page is the file's page-cache page, and
        // the file still exists (the mapping and the descriptor keep the
        // inode alive), so dropping the pages changes nothing a reader can
        // see: the next access faults the same bytes back in. Nothing writes
        // them in between (not writable; a debugger's breakpoint would be
        // the only exception, and RELRO, written before it was made
        // read-only, shows as anonymous). The range stays mapped to this
        // copy: an attached library is never unmapped, so no other mapping
        // can be there. Code still running in it (a TLS destructor on an
        // exiting thread) only takes page faults. MADV_DONTNEED never
        // touches memory outside the range.
        let result = unsafe { libc::madvise(mapping.start as *mut libc::c_void, length, libc::MADV_DONTNEED) };
        if result == 0 {
            released.resident += pages.resident;
        } else {
            // EINVAL for a locked mapping (mlockall): it stays resident.
            debug_once(&MADVISE_REFUSED, "madvise(MADV_DONTNEED) refused", &std::io::Error::last_os_error());
        }
    }
    // Clean page-cache pages no one maps any more go too (a no-op on tmpfs,
    // where the pages are the file).
    // SAFETY: posix_fadvise on a descriptor `file` owns; it is advice only.
    let advice = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if advice != 0 {
        debug_once(
            &FADVISE_REFUSED,
            "posix_fadvise(POSIX_FADV_DONTNEED) refused",
            &std::io::Error::from_raw_os_error(advice),
        );
    }
    tracing::debug!(
        copy = %copy.display(),
        resident_released = released.resident,
        file_punched = released.punched,
        "released what a retired version keeps"
    );
    released
}

static MADVISE_REFUSED: AtomicBool = AtomicBool::new(false);
static PAGEMAP_REFUSED: AtomicBool = AtomicBool::new(false);
static FADVISE_REFUSED: AtomicBool = AtomicBool::new(false);
static PUNCH_REFUSED: AtomicBool = AtomicBool::new(false);

/// Logs `what` at debug level the first time only (per process).
fn debug_once(logged: &AtomicBool, what: &str, error: &std::io::Error) {
    if !logged.swap(true, Ordering::Relaxed) {
        tracing::debug!(%error, "{what} on a retired library copy; going on (logged once)");
    }
}

/// Punches holes over every byte of the copy that no loaded segment's pages
/// cover; returns how many bytes were punched.
fn punch_unloaded(file: &File, writable: &File, copy: &Path) -> u64 {
    let Some(segments) = read_load_segments(file) else {
        tracing::debug!(copy = %copy.display(), "cannot read a retired copy's program headers; no hole punched");
        return 0;
    };
    let Ok(length) = file.metadata().map(|m| m.len()) else { return 0 };
    let mut punched = 0;
    for (start, end) in holes(&segments, length, page_size()) {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(end - start)) else {
            continue;
        };
        // SAFETY: fallocate on a descriptor `writable` owns. The range holds
        // no byte of a page that a loaded segment maps (`holes`), so no
        // mapping sees its contents change; only section data that nothing
        // maps reads as zeros afterwards.
        let result = unsafe {
            libc::fallocate(writable.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
        };
        if result != 0 {
            debug_once(&PUNCH_REFUSED, "punching holes is refused", &std::io::Error::last_os_error());
            break;
        }
        punched += end - start;
    }
    punched
}

/// The `PT_LOAD` file ranges of a copy, from its headers.
fn read_load_segments(file: &File) -> Option<Vec<(u64, u64)>> {
    let mut head = vec![0u8; 4096];
    let read = file.read_at(&mut head, 0).ok()?;
    head.truncate(read);
    let needed = usize::try_from(crate::elf::headers_len(&head)?).ok()?;
    if needed > head.len() {
        head.resize(needed, 0);
        file.read_exact_at(&mut head, 0).ok()?;
    }
    crate::elf::load_segments(&head)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&size| size > 0).unwrap_or(4096)
}

/// The byte ranges of a file of `length` bytes outside every page that a
/// loaded segment maps (`segments`: file ranges; the loader maps each from
/// its offset rounded down to a page to its end rounded up).
fn holes(segments: &[(u64, u64)], length: u64, page: u64) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = segments
        .iter()
        .map(|&(start, end)| (start / page * page, end.max(start).div_ceil(page).saturating_mul(page)))
        .collect();
    covered.sort_unstable();
    let mut holes = Vec::new();
    let mut at = 0;
    for (start, end) in covered {
        if start > at {
            holes.push((at, start.min(length)));
        }
        at = at.max(end);
    }
    if length > at {
        holes.push((at, length));
    }
    holes.retain(|(start, end)| end > start);
    holes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_leave_every_loaded_page_alone() {
        let page = 4096;
        // Headers and text from 0, data at an unaligned offset, a tail of
        // debug sections.
        let segments = [(0, 10_000), (20_000, 30_000)];
        assert_eq!(holes(&segments, 100_000, page), [(12_288, 16_384), (32_768, 100_000)]);
        // Adjacent pages: nothing between them.
        assert!(holes(&[(0, 4096), (4100, 9000)], 12_288, page).is_empty());
        // Nothing past the last segment.
        assert!(holes(&[(0, 8192)], 8192, page).is_empty());
        // Out of order, overlapping.
        assert_eq!(
            holes(&[(20_000, 30_000), (0, 10_000), (1000, 2000)], 40_000, page),
            [(12_288, 16_384), (32_768, 40_000)]
        );
    }

    #[test]
    fn maps_lines_are_read() {
        let text = "\
7f00aa000000-7f00aa010000 r-xp 00001000 fd:01 1234                       /tmp/verdant-1-2/shop-3-abc.so (deleted)
7f00aa010000-7f00aa012000 rw-p 00000000 00:00 0 
";
        let mappings: Vec<Mapping> = text.lines().filter_map(parse_header).collect();
        assert_eq!(mappings.len(), 2);
        let code = &mappings[0];
        assert_eq!((code.start, code.end), (0x7f00aa000000, 0x7f00aa010000));
        assert_eq!(code.id, Some(FileId { major: 0xfd, minor: 1, inode: 1234 }));
        assert_eq!(code.path, "/tmp/verdant-1-2/shop-3-abc.so");
        assert!(code.private_read_only());
        let bss = &mappings[1];
        assert_eq!(bss.id, None);
        assert!(!bss.private_read_only());
    }

    #[test]
    fn pagemap_entries_count_resident_and_anonymous_pages() {
        let entries: Vec<u8> = [
            PRESENT | FILE_PAGE, // a file page in memory
            PRESENT,             // copied on write
            SWAPPED,             // anonymous, swapped out
            FILE_PAGE,           // not present
            0,                   // never touched
        ]
        .iter()
        .flat_map(|entry| entry.to_ne_bytes())
        .collect();
        assert_eq!(count_pages(&entries, 4096), Pages { resident: 2 * 4096, anonymous: 2 * 4096 });
    }

    #[test]
    fn pagemap_sees_a_written_private_page_as_anonymous() {
        // A private file mapping of this test's own executable: read, it is
        // the file's; written (after mprotect), it is a copy.
        let exe = File::open("/proc/self/exe").expect("the test executable");
        let page = page_size();
        let len = usize::try_from(page).expect("a page fits in usize");
        // SAFETY: a fresh private mapping of one page of an open file, used
        // and unmapped here only.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                exe.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let mapping =
            Mapping { start: at as u64, end: at as u64 + page, perms: *b"rw-p", id: None, path: String::new() };
        let pagemap = PageMap::open().expect("pagemap");
        // SAFETY: reads and writes one byte inside the mapping made above.
        unsafe { std::ptr::read_volatile(at.cast::<u8>()) };
        assert_eq!(pagemap.measure(&mapping), Pages { resident: page, anonymous: 0 });
        unsafe { std::ptr::write_volatile(at.cast::<u8>(), 1) };
        assert_eq!(pagemap.measure(&mapping), Pages { resident: page, anonymous: page });
        // SAFETY: unmaps the mapping made above; nothing refers to it.
        unsafe { libc::munmap(at, len) };
    }
}
