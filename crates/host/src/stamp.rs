//! The version of the watchdog and manager binaries, kept in a fixed slot
//! of the executable: `@@PALETTE-VERSION@@` followed by the version, padded
//! with NULs to 64 bytes. A build carries its crate version there; a copy
//! can be *stamped* with another by rewriting the slot (`stamp_bytes`),
//! without a rebuild — the end-to-end tests make "newer" watchdog releases
//! that way from the one build they test.

use palette_protocol::Version;

/// The slot's marker.
pub const MARKER: &[u8] = b"@@PALETTE-VERSION@@";
const SLOT: usize = 64;

const fn make_slot() -> [u8; SLOT] {
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let mut out = [0u8; SLOT];
    let mut i = 0;
    while i < MARKER.len() {
        out[i] = MARKER[i];
        i += 1;
    }
    let mut j = 0;
    while j < v.len() {
        out[MARKER.len() + j] = v[j];
        j += 1;
    }
    out
}

#[used]
static VERSION_SLOT: [u8; SLOT] = make_slot();

/// This binary's version, read from its slot at run time.
pub fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        // Read through an opaque reference: the compiler must not fold the
        // build's value in, or a stamped copy would not see its stamp.
        let slot: &[u8; SLOT] = std::hint::black_box(&VERSION_SLOT);
        parse_slot(&slot[MARKER.len()..])
            .unwrap_or(env!("CARGO_PKG_VERSION"))
            .to_string()
    })
}

fn parse_slot(rest: &[u8]) -> Option<&str> {
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    s.parse::<Version>().ok().map(|_| s)
}

/// The version in the first version slot of `bytes` (a binary, or a piece
/// of one that holds a whole slot), if it has one.
pub fn slot_version(bytes: &[u8]) -> Option<String> {
    memchr::memmem::find_iter(bytes, MARKER)
        .filter(|at| is_slot(bytes.get(*at..*at + SLOT)))
        .find_map(|at| parse_slot(&bytes[at + MARKER.len()..at + SLOT]).map(str::to_string))
}

/// Finds the version slot in a binary read in pieces (see `slot_version`).
#[derive(Debug, Default)]
pub struct SlotScanner {
    carry: Vec<u8>,
    found: Option<String>,
}

impl SlotScanner {
    /// Looks at the next piece of the binary.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.found.is_some() {
            return;
        }
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(chunk);
        self.found = slot_version(&window);
        let keep = window.len().min(SLOT - 1);
        self.carry = window[window.len() - keep..].to_vec();
    }

    /// The version found, once the whole binary was fed.
    pub fn version(self) -> Option<String> {
        self.found
    }
}

/// Why a binary could not be stamped.
#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error("no version slot in the binary")]
    NoSlot,
    #[error("version {0:?} does not fit the slot")]
    TooLong(String),
}

/// Rewrites the version slot of a binary's bytes.
pub fn stamp_bytes(bytes: &mut [u8], version: &Version) -> Result<(), StampError> {
    let v = version.to_string();
    if v.len() >= SLOT - MARKER.len() {
        return Err(StampError::TooLong(v));
    }
    // The marker text also stands elsewhere in a binary (the constant it
    // is built from; a debug build keeps several copies): only a place
    // that *is* a slot — the marker, a version, then zeros to the end —
    // is rewritten. Every such place is (a linker may keep copies).
    let slots: Vec<usize> = bytes
        .windows(MARKER.len())
        .enumerate()
        .filter(|(at, w)| *w == MARKER && is_slot(bytes.get(*at..*at + SLOT)))
        .map(|(at, _)| at)
        .collect();
    if slots.is_empty() {
        return Err(StampError::NoSlot);
    }
    for at in slots {
        let slot = &mut bytes[at + MARKER.len()..at + SLOT];
        slot.fill(0);
        slot[..v.len()].copy_from_slice(v.as_bytes());
    }
    Ok(())
}

/// Whether `b` (SLOT bytes) is a version slot: the marker, a version, and
/// nothing but zeros after it.
fn is_slot(b: Option<&[u8]>) -> bool {
    let Some(b) = b.filter(|b| b.len() == SLOT) else {
        return false;
    };
    let rest = &b[MARKER.len()..];
    let end = rest.iter().position(|x| *x == 0).unwrap_or(rest.len());
    parse_slot(rest).is_some() && rest[end..].iter().all(|x| *x == 0)
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn a_slot_is_found_across_pieces() {
        let mut bin = vec![7u8; 1000];
        bin.extend_from_slice(&make_slot());
        bin.extend_from_slice(&[9u8; 1000]);
        stamp_bytes(&mut bin, &Version::new(0, 1, 0)).unwrap();
        assert_eq!(slot_version(&bin).as_deref(), Some("0.1.0"));
        for piece in [1, 7, 63, 64, 65, 4096] {
            let mut s = SlotScanner::default();
            for c in bin.chunks(piece) {
                s.feed(c);
            }
            assert_eq!(s.version().as_deref(), Some("0.1.0"), "pieces of {piece}");
        }
        assert_eq!(slot_version(b"@@PALETTE-VERSION@@ no slot here"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_reads_its_own_version_and_a_stamp_replaces_it() {
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
        let mut bytes = b"xx".to_vec();
        bytes.extend_from_slice(&make_slot());
        bytes.extend_from_slice(b"yy");
        stamp_bytes(&mut bytes, &Version::new(12, 3, 4)).unwrap();
        let at = bytes
            .windows(MARKER.len())
            .position(|w| w == MARKER)
            .unwrap();
        assert_eq!(
            parse_slot(&bytes[at + MARKER.len()..at + SLOT]),
            Some("12.3.4")
        );
        assert!(bytes.ends_with(b"yy"));
        assert!(matches!(
            stamp_bytes(&mut b"no slot".to_vec(), &Version::new(1, 0, 0)),
            Err(StampError::NoSlot)
        ));
        // The marker text standing elsewhere (before the slot, followed by
        // other data) is left alone; the real slot is stamped.
        let mut bytes = MARKER.to_vec();
        bytes.extend_from_slice(b"some other constant data that follows it in .rdata....");
        let decoy = bytes.clone();
        bytes.extend_from_slice(&make_slot());
        stamp_bytes(&mut bytes, &Version::new(9, 0, 0)).unwrap();
        assert_eq!(&bytes[..decoy.len()], &decoy[..]);
        assert_eq!(
            parse_slot(&bytes[decoy.len() + MARKER.len()..decoy.len() + SLOT]),
            Some("9.0.0")
        );
    }
}
