//! What a retired version keeps for ever (issue 11 §2), measured with real
//! fixture libraries against `/proc/self/smaps` and `fstat`, independently
//! of verdant's own reading of them:
//!
//! - once retired for good, a version's read-only mappings hold no resident
//!   page, its copy holds no more file space than its loaded segments, and
//!   what it maps still reads back exactly the bytes of the file;
//! - the serving version is left alone, and a retired version still pinned
//!   keeps working;
//! - `status().retained` and the metrics report what smaps and `fstat` show.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::read::elf::{FileHeader, ProgramHeader};
use verdant::Verdant;
use verdant_tests::{fixture, poll_until, Artifact};

/// One mapping of this process, as the test reads `/proc/self/smaps`.
#[derive(Debug)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    offset: u64,
    path: String,
    rss: u64,
    anonymous: u64,
}

fn smaps() -> Vec<Mapping> {
    let text = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Rss:", kib, "kB"] => {
                mappings.last_mut().expect("a header first").rss = kib.parse::<u64>().unwrap() * 1024
            }
            ["Anonymous:", kib, "kB"] => {
                mappings.last_mut().expect("a header first").anonymous = kib.parse::<u64>().unwrap() * 1024
            }
            [range, perms, offset, _dev, _inode, ..] if range.contains('-') && !range.ends_with(':') => {
                let (start, end) = range.split_once('-').unwrap();
                let path = line.splitn(6, char::is_whitespace).nth(5).unwrap_or("").trim_start();
                mappings.push(Mapping {
                    start: usize::from_str_radix(start, 16).unwrap(),
                    end: usize::from_str_radix(end, 16).unwrap(),
                    perms: (*perms).to_owned(),
                    offset: u64::from_str_radix(offset, 16).unwrap(),
                    path: path.strip_suffix(" (deleted)").unwrap_or(path).to_owned(),
                    rss: 0,
                    anonymous: 0,
                });
            }
            _ => {}
        }
    }
    mappings
}

/// The allocated bytes (`st_blocks * 512`) of each private copy this process
/// holds open, by copy path: the copies are deleted once retired, but the
/// descriptor they were loaded through stays open, and `/proc/self/fd/N`
/// reaches their inode.
fn copy_file_bytes(private_dir: &Path) -> HashMap<PathBuf, u64> {
    let mut bytes = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd").flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy();
        let path = PathBuf::from(target.strip_suffix(" (deleted)").unwrap_or(&target));
        if !path.starts_with(private_dir) {
            continue;
        }
        // Spare files made ahead of time for the next copies are unnamed
        // (`O_TMPFILE`, shown as `#<inode>`): no copy of any version.
        if path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('#')) {
            continue;
        }
        // (The private directory itself is open too: its lock.)
        match std::fs::metadata(entry.path()) {
            Ok(metadata) if metadata.is_file() => {
                bytes.insert(path, metadata.blocks() * 512);
            }
            _ => {}
        }
    }
    bytes
}

/// The bytes of a library's `PT_LOAD` segments, each rounded out to whole
/// pages as the loader maps them: the most a retired copy may hold.
fn loaded_bytes(library: &[u8]) -> u64 {
    let header = object::elf::FileHeader64::<object::Endianness>::parse(library).expect("an ELF file");
    let endian = header.endian().expect("an endianness");
    let page = 4096;
    header
        .program_headers(endian, library)
        .expect("program headers")
        .iter()
        .filter(|segment| segment.p_type(endian) == object::elf::PT_LOAD)
        .map(|segment| {
            let start = segment.p_offset(endian) / page * page;
            let end = (segment.p_offset(endian) + segment.p_filesz(endian)).div_ceil(page) * page;
            end - start
        })
        .sum()
}

/// Every retired copy of `name` (path), oldest first.
fn retired_copies(verdant: &Verdant, name: &str) -> Vec<PathBuf> {
    let status = verdant.status();
    let loadable = status.loadables.iter().find(|l| l.name == name).expect("registered");
    loadable.retired.iter().map(|retired| retired.copy.clone()).collect()
}

/// The value of a metric without labels in `text`.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name} in\n{text}"))
}

#[test]
fn retired_versions_give_back_their_pages_and_file_space_and_say_what_they_keep() {
    const RELOADS: usize = 6;
    let fixtures = ["good-v1", "good-v2"];
    let artifact = Artifact::new(fixtures[0]);
    let (verdant, _shared, probe) = verdant_tests::attached(&artifact);
    let private_dir = verdant.status().private_dir;

    // A thread that ran v1's code, and exits only after v1 was released:
    // the thread-local destructors that code registered then run from
    // pages that were dropped and must fault back in.
    let (exit, exit_when) = std::sync::mpsc::channel::<()>();
    let on_thread = probe.clone();
    let thread = std::thread::spawn(move || {
        let version = on_thread.get().expect("get v1 on a thread").version();
        drop(on_thread);
        let _ = exit_when.recv();
        version
    });
    // A version retired while a call holds it: it must keep working.
    let pinned = probe.get().expect("get v1");
    for reload in 1..=RELOADS {
        artifact.install(fixtures[reload % 2]);
        let report = verdant.reload_blocking(None).expect("reload");
        assert!(report.is_success(), "{report}");
        // Every version runs code (its proxy, its guard, its method).
        let expected = if reload % 2 == 1 { 2 } else { 1 };
        assert_eq!(probe.get().expect("get").version(), expected);
    }
    // The pinned version is retired but not released: calls into it work.
    assert_eq!(pinned.version(), 1);
    assert!(pinned.describe().starts_with("fixture version 1 "), "{}", pinned.describe());
    poll_until(&verdant, "every retired version but the pinned one to be released", || {
        verdant.status().retained.versions == RELOADS as u64 - 1
    });
    assert_eq!(pinned.version(), 1, "a pinned retired version stopped working");
    drop(pinned);
    poll_until(&verdant, "every retired version to be released", || {
        verdant.status().retained.versions == RELOADS as u64
    });

    let retired = retired_copies(&verdant, "probe");
    assert_eq!(retired.len(), RELOADS, "{}", verdant.status());
    let serving = verdant.status().loadables[0].current.clone().expect("serving");
    let mappings = smaps();
    let files = copy_file_bytes(&private_dir);
    let status = verdant.status();
    let mut rss = 0;
    let mut file_bytes = 0;
    for (index, copy) in retired.iter().enumerate() {
        // Retired copies alternate between the two fixtures, v1 first.
        let original = std::fs::read(fixture(fixtures[index % 2])).expect("read the fixture");
        let of_copy: Vec<&Mapping> = mappings.iter().filter(|m| Path::new(&m.path) == copy).collect();
        assert!(!of_copy.is_empty(), "{} is not mapped any more", copy.display());
        let read_only_resident: u64 =
            of_copy.iter().filter(|m| !m.perms.contains('w') && m.anonymous == 0).map(|m| m.rss).sum();
        assert!(
            read_only_resident <= 2 * 4096,
            "{}: {read_only_resident} bytes of its read-only mappings are still resident: {of_copy:#?}",
            copy.display()
        );
        rss += of_copy.iter().map(|m| m.rss).sum::<u64>();

        let held = *files.get(copy).unwrap_or_else(|| panic!("no descriptor of {} is open", copy.display()));
        let loaded = loaded_bytes(&original);
        assert!(
            held <= loaded,
            "{} holds {held} bytes on its filesystem, more than its loaded segments ({loaded} of {} bytes)",
            copy.display(),
            original.len()
        );
        file_bytes += held;
    }

    // The serving version is left alone: its copy is whole (its debug
    // sections written after the load included), its code resident.
    let serving_copy = files.keys().find(|path| !retired.contains(path)).cloned().expect("the serving copy is open");
    assert!(probe.get().expect("get").version() >= 1);
    let serving_resident: u64 =
        smaps().iter().filter(|m| Path::new(&m.path) == serving_copy && m.perms.contains('x')).map(|m| m.rss).sum();
    assert!(
        serving_resident > 0,
        "the serving version's code ({}) is not resident: {:#?}",
        serving_copy.display(),
        smaps().iter().filter(|m| m.path.contains("/verdant-")).collect::<Vec<_>>()
    );
    let serving_fixture = if serving.generation % 2 == 0 { fixtures[1] } else { fixtures[0] };
    let serving_bytes = std::fs::read(fixture(serving_fixture)).expect("read the fixture");
    assert!(
        verdant_tests::eventually(|| std::fs::read(&serving_copy).is_ok_and(|copy| copy == serving_bytes)),
        "the serving copy {} is not whole",
        serving_copy.display()
    );

    // status() and the metrics say what smaps and fstat show.
    assert_eq!(status.retained.versions, RELOADS as u64);
    assert_eq!(status.retained.file_bytes, file_bytes, "{status}");
    let slack = 64 * 1024; // pages faulted in between the two reads
    assert!(
        status.retained.rss_bytes.abs_diff(rss) <= slack,
        "status says {} bytes, smaps {rss}",
        status.retained.rss_bytes
    );
    assert!(status.to_string().contains(&format!("retained for ever: {RELOADS} retired versions")), "{status}");
    let json = serde_json::to_value(&status).expect("serialize");
    assert_eq!(json["retained"]["file_bytes"], file_bytes);
    let metrics = verdant.metrics_text();
    assert_eq!(sample(&metrics, "verdant_retained_versions"), RELOADS as u64, "{metrics}");
    assert_eq!(sample(&metrics, "verdant_retained_file_bytes"), file_bytes, "{metrics}");
    assert!(sample(&metrics, "verdant_retained_resident_bytes").abs_diff(rss) <= slack, "{metrics}");
    // (After the measurements: this faults some of v1's pages back in.)
    exit.send(()).expect("the thread waits");
    assert_eq!(thread.join().expect("the thread's exit ran v1's destructors"), 1);

    // What the loader mapped still reads back as the file's bytes, from
    // pages dropped and faulted in again (last: this makes them resident).
    for (index, copy) in retired.iter().enumerate() {
        let original = std::fs::read(fixture(fixtures[index % 2])).expect("read the fixture");
        let of_copy: Vec<&Mapping> = mappings.iter().filter(|m| Path::new(&m.path) == copy).collect();
        // (Not RELRO: the dynamic linker wrote its relocations there, so
        // it holds anonymous pages and was left alone.)
        for mapping in of_copy.iter().filter(|m| m.perms.starts_with("r-") && m.anonymous == 0) {
            let length = mapping.end - mapping.start;
            let offset = usize::try_from(mapping.offset).unwrap();
            if offset >= original.len() {
                continue;
            }
            let length = length.min(original.len() - offset);
            // SAFETY: a readable mapping of this process that nothing
            // unmaps (an attached library stays mapped), within its file.
            let mapped = unsafe { std::slice::from_raw_parts(mapping.start as *const u8, length) };
            assert!(
                mapped == &original[offset..offset + length],
                "{}: the mapping {mapping:?} does not read back the file's bytes",
                copy.display(),
            );
        }
    }

    println!(
        "{RELOADS} retired versions keep {} KiB resident ({} KiB each) and {} KiB of files",
        rss / 1024,
        rss / 1024 / RELOADS as u64,
        file_bytes / 1024
    );
}
