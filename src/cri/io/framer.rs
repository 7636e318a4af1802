//! Pure framing of a byte stream into CRI log records (no I/O, so it is unit-tested alone).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `P` (partial) or `F` (full line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Partial,
    Full,
}

impl Tag {
    fn as_str(self) -> &'static str {
        match self {
            Tag::Partial => "P",
            Tag::Full => "F",
        }
    }
}

/// Splits one stream into records. Holds at most `max_line` bytes of an unfinished line.
#[derive(Debug)]
pub struct Framer {
    stream: Stream,
    max_line: usize,
    pending: Vec<u8>,
}

impl Framer {
    /// `max_line` ≥ 1: the longest content of one record.
    pub fn new(stream: Stream, max_line: usize) -> Framer {
        Framer {
            stream,
            max_line: max_line.max(1),
            pending: Vec::new(),
        }
    }

    /// Whether an unfinished line is buffered.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Feeds `data`; appends every complete record to `out`.
    pub fn push(&mut self, mut data: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        while !data.is_empty() {
            let room = self.max_line - self.pending.len();
            match data.iter().take(room + 1).position(|&b| b == b'\n') {
                Some(nl) if nl <= room => {
                    self.pending.extend_from_slice(&data[..nl]);
                    self.emit(Tag::Full, now, out);
                    data = &data[nl + 1..];
                }
                _ => {
                    let take = room.min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == self.max_line {
                        // A full chunk: partial, unless the very next byte ends the line
                        // (then the chunk is the whole line). When that byte has not
                        // arrived yet, keep the chunk: the next push (or a flush) decides.
                        match data.first() {
                            None => break,
                            Some(b'\n') => {
                                self.emit(Tag::Full, now, out);
                                data = &data[1..];
                            }
                            Some(_) => self.emit(Tag::Partial, now, out),
                        }
                    }
                }
            }
        }
    }

    /// Writes the unfinished line, if any, as a `P` record (stream end, or idle).
    pub fn flush_partial(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.emit(Tag::Partial, now, out);
        }
    }

    fn emit(&mut self, tag: Tag, now: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(format_timestamp(now).as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.stream.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.pending);
        out.push(b'\n');
        self.pending.clear();
    }
}

/// Go's `time.RFC3339Nano` in UTC: `2006-01-02T15:04:05.999999999Z` (trailing zeros of
/// the fraction dropped, no fraction when it is zero).
pub fn format_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn timestamp_is_rfc3339nano_utc() {
        assert_eq!(format_timestamp(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp(at(1_700_000_000, 120_000_000)),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(
            format_timestamp(at(951_782_400, 1)),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            format_timestamp(at(4_102_444_799, 999_999_999)),
            "2099-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn full_lines_are_tagged_f_without_their_newline() {
        let mut f = Framer::new(Stream::Stdout, 16 * 1024);
        let mut out = Vec::new();
        f.push(b"hello\nworld\n", at(0, 5), &mut out);
        assert_eq!(
            lines(&out),
            [
                "1970-01-01T00:00:00.000000005Z stdout F hello",
                "1970-01-01T00:00:00.000000005Z stdout F world"
            ]
        );
        assert!(!f.has_pending());
    }

    #[test]
    fn a_line_split_across_reads_is_one_record() {
        let mut f = Framer::new(Stream::Stderr, 100);
        let mut out = Vec::new();
        f.push(b"hel", at(1, 0), &mut out);
        assert!(out.is_empty() && f.has_pending());
        f.push(b"lo\n", at(2, 0), &mut out);
        assert_eq!(lines(&out), ["1970-01-01T00:00:02Z stderr F hello"]);
    }

    #[test]
    fn empty_line_is_an_empty_f_record() {
        let mut f = Framer::new(Stream::Stdout, 8);
        let mut out = Vec::new();
        f.push(b"\n", at(0, 0), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00Z stdout F \n"
        );
    }

    #[test]
    fn long_line_is_split_into_p_chunks_ending_with_f() {
        let max = 16 * 1024;
        let mut f = Framer::new(Stream::Stdout, max);
        let mut out = Vec::new();
        let line = vec![b'x'; max * 2 + 10];
        // Fed in odd-sized reads to exercise the buffering.
        let mut data = line.clone();
        data.push(b'\n');
        for chunk in data.chunks(4093) {
            f.push(chunk, at(0, 0), &mut out);
        }
        let l = lines(&out);
        assert_eq!(l.len(), 3);
        let tags: Vec<&str> = l.iter().map(|s| s.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "P", "F"]);
        let contents: Vec<usize> = l.iter().map(|s| s.splitn(4, ' ').nth(3).unwrap().len()).collect();
        assert_eq!(contents, [max, max, 10]);
    }

    #[test]
    fn line_of_exactly_max_is_one_f_record() {
        let mut f = Framer::new(Stream::Stdout, 4);
        let mut out = Vec::new();
        f.push(b"abcd", at(0, 0), &mut out);
        f.push(b"\nef\n", at(0, 0), &mut out);
        assert_eq!(
            lines(&out),
            [
                "1970-01-01T00:00:00Z stdout F abcd",
                "1970-01-01T00:00:00Z stdout F ef"
            ]
        );
    }

    #[test]
    fn output_without_trailing_newline_is_flushed_as_p() {
        let mut f = Framer::new(Stream::Stdout, 64);
        let mut out = Vec::new();
        f.push(b"done\nprompt> ", at(0, 0), &mut out);
        assert_eq!(lines(&out).len(), 1);
        f.flush_partial(at(0, 0), &mut out);
        assert_eq!(
            lines(&out),
            [
                "1970-01-01T00:00:00Z stdout F done",
                "1970-01-01T00:00:00Z stdout P prompt> "
            ]
        );
        // Nothing pending: a second flush writes nothing.
        let n = out.len();
        f.flush_partial(at(0, 0), &mut out);
        assert_eq!(out.len(), n);
    }

    #[test]
    fn bytes_are_kept_verbatim() {
        let mut f = Framer::new(Stream::Stdout, 64);
        let mut out = Vec::new();
        f.push(b"tab\there \xff\xfe cr\r\n", at(0, 0), &mut out);
        assert!(out.ends_with(b"stdout F tab\there \xff\xfe cr\r\n"));
    }
}
