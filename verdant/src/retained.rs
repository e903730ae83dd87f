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
                summary.rss_bytes +=
                    pagemap.as_ref().map_or(0, |pagemap| pagemap.measure(mapping.start, mapping.end).resident);
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
    /// The mapped file; `None` for anonymous mappings (inode 0).
    pub id: Option<FileId>,
    /// The file's path as the kernel shows it, without " (deleted)"; empty
    /// for an anonymous mapping.
    pub path: String,
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

    /// The pages from `start` to `end` (page-aligned); all zero when they
    /// cannot be read.
    fn measure(&self, start: u64, end: u64) -> Pages {
        let first = start / self.page;
        let count = end.saturating_sub(start) / self.page;
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
    let _perms = fields.next()?;
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
        id,
        path: path.to_owned(),
    })
}

/// The page ranges of the read-only `PT_LOAD` segments of the `dlopen`ed
/// object that contains `address`, as the dynamic loader mapped them (its
/// base address plus each segment's `p_vaddr`, rounded out to whole pages);
/// empty for an address of no loaded object (and for the main program,
/// which `dladdr` names by `argv[0]` but the loader by "").
///
/// From `dl_iterate_phdr`, which walks the loader's own list of objects
/// (microseconds, no system call), instead of `/proc/self/maps`, whose
/// text the kernel formats for every mapping of the process: read once per
/// retirement, that grew with every retained version and competed with the
/// next reload for the CPU and the memory map's lock.
pub(crate) fn read_only_segments(address: usize) -> Vec<(usize, usize)> {
    struct Search {
        /// The object's name as the loader keeps it (`l_name`): the same
        /// pointer `dladdr` and `dl_iterate_phdr` hand out.
        name: *const libc::c_char,
        page: usize,
        found: Vec<(usize, usize)>,
    }

    /// One loaded object: stop (return 1) once it is the one holding the address.
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: glibc passes a valid `dl_phdr_info` for the duration of
        // the call, and `data` is the `Search` that `read_only_segments`
        // lent to `dl_iterate_phdr` for the duration of the walk.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        // Matched by the name's address, which lives in the loader's own
        // memory: the program headers of the other objects are not read,
        // since they lie in their first page, and reading them would fault
        // that page back into every retired copy released before.
        if info.dlpi_name != search.name || info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers of
        // the loaded object, valid while the object is loaded (it is: the
        // loader holds its lock during the walk).
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let base = info.dlpi_addr as usize;
        let loads = headers.iter().filter(|h| h.p_type == libc::PT_LOAD);
        for header in loads.filter(|h| h.p_flags & libc::PF_W == 0) {
            let start = base.wrapping_add(header.p_vaddr as usize);
            let end = start.wrapping_add(header.p_memsz as usize);
            search.found.push((start / search.page * search.page, end.div_ceil(search.page) * search.page));
        }
        1
    }

    // SAFETY: `Dl_info` is plain data (pointers and nulls are valid), and
    // dladdr only writes it; it finds the object by the loader's own record
    // of each object's address range.
    let mut object: libc::Dl_info = unsafe { std::mem::zeroed() };
    if unsafe { libc::dladdr(address as *const libc::c_void, &mut object) } == 0 || object.dli_fname.is_null() {
        return Vec::new();
    }
    let page = usize::try_from(page_size()).unwrap_or(4096);
    let mut search = Search { name: object.dli_fname, page, found: Vec::new() };
    // SAFETY: `visit` matches the callback type and only reads what glibc
    // passes it; `search` outlives the call, which does not keep `data`.
    unsafe { libc::dl_iterate_phdr(Some(visit), std::ptr::addr_of_mut!(search).cast()) };
    search.found
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
/// (`writable`: hole punching needs a descriptor open for writing), and
/// any address `inside` the library (its segments are found from it).
pub(crate) fn release(file: &File, writable: Option<&File>, copy: &Path, inside: usize) -> Released {
    let mut released = Released::default();
    if let Some(writable) = writable {
        released.punched = punch_unloaded(file, writable, copy);
    }
    let pagemap = PageMap::open();
    for (start, end) in read_only_segments(inside) {
        let Some(pagemap) = &pagemap else { break };
        let pages = pagemap.measure(start as u64, end as u64);
        if pages.resident == 0 || pages.anonymous != 0 {
            continue;
        }
        // SAFETY: the range is a read-only segment of this retired copy as
        // the dynamic loader mapped it (private, from the file), whose pages
        // are all the file's (checked just above, in pagemap: a text
        // relocation or a debugger's write would show as anonymous), and
        // the file still exists (the mapping and the descriptor keep the
        // inode alive), so dropping the pages changes nothing a reader can
        // see: the next access faults the same bytes back in. Nothing writes
        // them in between (not writable). The range stays mapped to this
        // copy: an attached library is never unmapped, so no other mapping
        // can be there. Code still running in it (a TLS destructor on an
        // exiting thread) only takes page faults. MADV_DONTNEED never
        // touches memory outside the range.
        let result = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
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
        let bss = &mappings[1];
        assert_eq!(bss.id, None);
    }

    #[test]
    fn the_loaders_read_only_segments_are_read_only_mappings_of_the_object() {
        // A loaded shared object (libc), found from the address of its code.
        let code = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize;
        let segments = read_only_segments(code);
        assert!(segments.iter().any(|&(start, end)| (start..end).contains(&code)), "{segments:x?}");
        assert!(segments.iter().all(|&(start, end)| start % 4096 == 0 && end % 4096 == 0 && end > start));
        // Every page of them is mapped without write permission.
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            let Some((from, to)) = range.split_once('-') else { continue };
            let (from, to) = (usize::from_str_radix(from, 16).unwrap(), usize::from_str_radix(to, 16).unwrap());
            let overlaps = segments.iter().any(|&(start, end)| from < end && start < to);
            assert!(!overlaps || !perms.contains('w'), "{line} overlaps {segments:x?}");
        }
        // An address of no loaded object: nothing.
        assert!(read_only_segments(8).is_empty());
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
        let (start, end) = (at as u64, at as u64 + page);
        let pagemap = PageMap::open().expect("pagemap");
        // SAFETY: reads and writes one byte inside the mapping made above.
        unsafe { std::ptr::read_volatile(at.cast::<u8>()) };
        assert_eq!(pagemap.measure(start, end), Pages { resident: page, anonymous: 0 });
        unsafe { std::ptr::write_volatile(at.cast::<u8>(), 1) };
        assert_eq!(pagemap.measure(start, end), Pages { resident: page, anonymous: page });
        // SAFETY: unmaps the mapping made above; nothing refers to it.
        unsafe { libc::munmap(at, len) };
    }
}
