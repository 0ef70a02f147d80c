//! A pre-pass over the YAML event stream, before any tree is built.
//!
//! serde_yaml_ng builds a whole [`serde_yaml_ng::Value`] (expanding aliases)
//! before anything can look at it, and libyaml's scanner costs O(depth) per
//! token, so checking depth or aliases on the finished tree is too late: a
//! deeply nested document already cost super-linear time. This module drives
//! the *same* parser serde_yaml_ng uses (`unsafe-libyaml`, with the same
//! encoding setting) event by event and stops at the first event that the
//! configuration rules forbid:
//!
//! * an alias (`*name`), anywhere, in block or flow style;
//! * an anchor (`&name`) on a scalar, a sequence or a mapping;
//! * a sequence or mapping start that opens more than `max_depth` nested
//!   collections;
//! * a syntax error reported by libyaml itself.
//!
//! Because it reads parser events and not text, `&` and `*` inside quoted or
//! plain scalars, comments and block scalars are never mistaken for anchors.
//! It stops as soon as it finds a problem, so a hostile document costs at
//! most `max_depth` levels of parser work plus libyaml's bounded look-ahead
//! (a simple key may span at most 1024 characters).

use std::ffi::CStr;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_yaml;

use crate::recover::{join_index, join_key};

/// Why the pre-pass stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// An anchor (`&name`) on a node.
    Anchor,
    /// An alias (`*name`).
    Alias,
    /// A collection nested deeper than the limit.
    TooDeep,
    /// libyaml could not parse the text; the message is libyaml's, with its
    /// positions.
    Syntax(String),
}

/// The first forbidden event of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// What was found.
    pub(crate) stop: Stop,
    /// YAML path of the node (`pipeline.sources[1]`); empty at the top level
    /// and for syntax errors.
    pub(crate) path: String,
    /// 1-based line of the event's start.
    pub(crate) line: u64,
    /// 1-based column of the event's start.
    pub(crate) column: u64,
}

/// Reads `text` as a YAML stream and returns the first anchor, alias,
/// too-deep collection or syntax error, if any. Depth counts open sequences
/// and mappings: `max_depth` of them may be open at once.
pub(crate) fn check(text: &str, max_depth: usize) -> Result<(), Finding> {
    let mut parser = Parser::new(text.as_bytes())?;
    let mut frames: Vec<Frame> = Vec::new();
    loop {
        let event = parser.next()?;
        let (line, column) = event.start();
        let found = |stop, frames: &[Frame]| Finding {
            stop,
            path: render_path(frames),
            line,
            column,
        };
        match event.kind() {
            Kind::StreamEnd => return Ok(()),
            Kind::Other => {}
            Kind::Alias => return Err(found(Stop::Alias, &frames)),
            Kind::Scalar { anchored, value } => {
                if anchored {
                    return Err(found(Stop::Anchor, &frames));
                }
                if let Some(Frame::Mapping {
                    key,
                    awaiting_value: false,
                }) = frames.last_mut()
                {
                    *key = Some(key_text(value));
                }
                node_done(&mut frames);
            }
            Kind::Start { anchored, mapping } => {
                if anchored {
                    return Err(found(Stop::Anchor, &frames));
                }
                if frames.len() >= max_depth {
                    return Err(found(Stop::TooDeep, &frames));
                }
                frames.push(if mapping {
                    Frame::Mapping {
                        key: None,
                        awaiting_value: false,
                    }
                } else {
                    Frame::Sequence { index: 0 }
                });
            }
            Kind::End => {
                frames.pop();
                node_done(&mut frames);
            }
            Kind::Nothing => {
                // libyaml produces no event only after the end of the stream,
                // which returned above: fail closed rather than accept a
                // document that was not read to its end.
                return Err(found(
                    Stop::Syntax("the YAML parser stopped before the end of the text".to_owned()),
                    &[],
                ));
            }
        }
    }
}

/// An open collection.
#[derive(Debug)]
enum Frame {
    /// A sequence and the index of the item being read.
    Sequence { index: usize },
    /// A mapping: the last scalar key read and whether its value is next.
    Mapping {
        key: Option<String>,
        awaiting_value: bool,
    },
}

/// Records that a complete node (scalar, or a collection that just ended) was
/// read inside the innermost open collection.
fn node_done(frames: &mut [Frame]) {
    match frames.last_mut() {
        Some(Frame::Sequence { index }) => *index = index.saturating_add(1),
        Some(Frame::Mapping {
            key,
            awaiting_value,
        }) => {
            if *awaiting_value {
                *key = None;
            }
            *awaiting_value = !*awaiting_value;
        }
        None => {}
    }
}

/// Longest mapping key, in characters, kept for paths in messages.
const MAX_KEY_CHARS: usize = 64;

/// A mapping key as it appears in a path: at most [`MAX_KEY_CHARS`]
/// characters, then `…`, so that a message stays short whatever the keys.
fn key_text(value: &[u8]) -> String {
    // 4 bytes per character at most: this prefix holds MAX_KEY_CHARS whole
    // characters whenever the key is longer.
    let prefix = &value[..value.len().min(4 * MAX_KEY_CHARS)];
    let text = String::from_utf8_lossy(prefix);
    let mut chars = text.chars();
    let mut key: String = chars.by_ref().take(MAX_KEY_CHARS).collect();
    if chars.next().is_some() || prefix.len() < value.len() {
        key.push('…');
    }
    key
}

/// The path of the node being read. Inside a mapping key (a rare complex
/// key) the path stops at the mapping.
fn render_path(frames: &[Frame]) -> String {
    let mut path = String::new();
    for frame in frames {
        match frame {
            Frame::Sequence { index } => path = join_index(&path, *index),
            Frame::Mapping {
                key: Some(key),
                awaiting_value: true,
            } => path = join_key(&path, key),
            Frame::Mapping { .. } => break,
        }
    }
    path
}

/// The kinds of event the pre-pass distinguishes.
enum Kind<'e> {
    StreamEnd,
    Alias,
    Scalar {
        anchored: bool,
        value: &'e [u8],
    },
    Start {
        anchored: bool,
        mapping: bool,
    },
    End,
    /// Stream start, document start and end: nothing to check.
    Other,
    /// `YAML_NO_EVENT` (only after the end of the stream).
    Nothing,
}

/// One libyaml parser reading a borrowed string. The parser lives in a box
/// because it keeps a pointer to itself (its read handler's data), so it
/// must not move once the input is set.
struct Parser<'a> {
    raw: Box<MaybeUninit<unsafe_yaml::yaml_parser_t>>,
    input: PhantomData<&'a [u8]>,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Result<Self, Finding> {
        let mut raw = Box::new(MaybeUninit::<unsafe_yaml::yaml_parser_t>::uninit());
        let parser = raw.as_mut_ptr();
        // SAFETY: `parser` points to writable, boxed (so never moved) memory
        // of the right size and alignment; `yaml_parser_initialize` zeroes
        // and initialises all of it.
        let initialised = unsafe { unsafe_yaml::yaml_parser_initialize(parser) };
        if initialised.fail {
            // unsafe-libyaml aborts on out-of-memory rather than failing, so
            // this is not expected; without an initialised parser there is
            // nothing to delete.
            return Err(Finding {
                stop: Stop::Syntax("the YAML parser could not be started".to_owned()),
                path: String::new(),
                line: 1,
                column: 1,
            });
        }
        // SAFETY: the parser was initialised above and has no input yet, as
        // both functions require. `input` outlives the parser: `Parser`
        // borrows it for `'a`, and the parser is deleted in `drop`. The
        // length of a slice always fits in u64 on supported targets.
        unsafe {
            unsafe_yaml::yaml_parser_set_encoding(parser, unsafe_yaml::YAML_UTF8_ENCODING);
            unsafe_yaml::yaml_parser_set_input_string(parser, input.as_ptr(), input.len() as u64);
        }
        Ok(Self {
            raw,
            input: PhantomData,
        })
    }

    /// The next event, or libyaml's error. After an error (which `check`
    /// stops at), libyaml produces no further events: another call would
    /// return `YAML_NO_EVENT`.
    fn next(&mut self) -> Result<Event, Finding> {
        let parser = self.raw.as_mut_ptr();
        let mut event = MaybeUninit::<unsafe_yaml::yaml_event_t>::uninit();
        // SAFETY: `parser` was initialised in `new` (in an error state,
        // libyaml returns an empty event); `event` is writable memory for one
        // event, which `yaml_parser_parse` zeroes before filling.
        let parsed = unsafe { unsafe_yaml::yaml_parser_parse(parser, event.as_mut_ptr()) };
        if parsed.fail {
            // SAFETY: the parser is initialised; after a failure libyaml has
            // set its error fields, which `syntax_error` only reads.
            return Err(unsafe { syntax_error(parser) });
        }
        Ok(Event(event))
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: the parser was initialised in `new` and is deleted once,
        // here; its input (borrowed for `'a`) is still alive.
        unsafe { unsafe_yaml::yaml_parser_delete(self.raw.as_mut_ptr()) }
    }
}

/// libyaml's error as text: `problem at line L column C[, context at line L
/// column C]` (serde_yaml_ng's wording).
///
/// # Safety
///
/// `parser` must point to an initialised parser whose last call failed.
unsafe fn syntax_error(parser: *const unsafe_yaml::yaml_parser_t) -> Finding {
    // SAFETY: guaranteed by the caller; the error fields are plain data.
    let parser = unsafe { &*parser };
    // SAFETY: libyaml's problem and context are null or point to static,
    // NUL-terminated string literals.
    let text = |ptr: *const i8| unsafe { c_text(ptr.cast()) };
    let problem = text(parser.problem)
        .unwrap_or_else(|| "the YAML parser failed without saying why".to_owned());
    let (line, column) = one_based(&parser.problem_mark);
    let mut message = format!("{problem} at line {line} column {column}");
    if let Some(context) = text(parser.context) {
        let (context_line, context_column) = one_based(&parser.context_mark);
        message.push_str(&format!(
            ", {context} at line {context_line} column {context_column}"
        ));
    }
    Finding {
        stop: Stop::Syntax(message),
        path: String::new(),
        line,
        column,
    }
}

/// The text of a C string, or `None` for a null pointer.
///
/// # Safety
///
/// `ptr` must be null or point to a NUL-terminated string that outlives the
/// call.
unsafe fn c_text(ptr: *const std::ffi::c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: not null, and NUL-terminated per the caller's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    Some(text.to_string_lossy().into_owned())
}

/// 1-based (line, column) of a libyaml mark (which counts from 0).
fn one_based(mark: &unsafe_yaml::yaml_mark_t) -> (u64, u64) {
    (mark.line.saturating_add(1), mark.column.saturating_add(1))
}

/// One event produced by `yaml_parser_parse`, deleted on drop.
struct Event(MaybeUninit<unsafe_yaml::yaml_event_t>);

impl Event {
    fn raw(&self) -> &unsafe_yaml::yaml_event_t {
        // SAFETY: an `Event` is only built after `yaml_parser_parse`
        // succeeded, which fully initialised it.
        unsafe { self.0.assume_init_ref() }
    }

    /// 1-based line and column of the event's start.
    fn start(&self) -> (u64, u64) {
        one_based(&self.raw().start_mark)
    }

    fn kind(&self) -> Kind<'_> {
        let raw = self.raw();
        match raw.type_ {
            unsafe_yaml::YAML_STREAM_END_EVENT => Kind::StreamEnd,
            unsafe_yaml::YAML_ALIAS_EVENT => Kind::Alias,
            unsafe_yaml::YAML_SCALAR_EVENT => {
                // SAFETY: for a scalar event the `scalar` member of the data
                // union is the one libyaml wrote.
                let scalar = unsafe { raw.data.scalar };
                let length = usize::try_from(scalar.length).unwrap_or(0);
                let value = if scalar.value.is_null() || length == 0 {
                    &[][..]
                } else {
                    // SAFETY: libyaml owns `length` initialised bytes at
                    // `value` until `yaml_event_delete`, which runs when this
                    // `Event` (which the returned slice borrows) drops.
                    unsafe { std::slice::from_raw_parts(scalar.value, length) }
                };
                Kind::Scalar {
                    anchored: !scalar.anchor.is_null(),
                    value,
                }
            }
            unsafe_yaml::YAML_SEQUENCE_START_EVENT => Kind::Start {
                // SAFETY: for a sequence start the `sequence_start` member of
                // the data union is the one libyaml wrote.
                anchored: !unsafe { raw.data.sequence_start }.anchor.is_null(),
                mapping: false,
            },
            unsafe_yaml::YAML_MAPPING_START_EVENT => Kind::Start {
                // SAFETY: for a mapping start the `mapping_start` member of
                // the data union is the one libyaml wrote.
                anchored: !unsafe { raw.data.mapping_start }.anchor.is_null(),
                mapping: true,
            },
            unsafe_yaml::YAML_SEQUENCE_END_EVENT | unsafe_yaml::YAML_MAPPING_END_EVENT => Kind::End,
            unsafe_yaml::YAML_NO_EVENT => Kind::Nothing,
            _ => Kind::Other,
        }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event was initialised by a successful
        // `yaml_parser_parse` and is deleted exactly once, here.
        unsafe { unsafe_yaml::yaml_event_delete(self.0.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop_of(text: &str) -> Option<Finding> {
        check(text, 4).err()
    }

    #[test]
    fn plain_documents_pass() {
        for text in [
            "",
            "a: 1\n",
            "a: {b: [1, 2, {c: d}]}\n",
            "name: \"Tom & *Jerry\"\nx: a&b\ny: '*z'\n# &c *d\nz: |\n  *e\n  &f\n",
            "k: [a&b, c*d, \"&x\"]\n",
            "---\na: 1\n---\nb: 2\n",
        ] {
            assert_eq!(stop_of(text), None, "{text:?}");
        }
    }

    #[test]
    fn anchors_and_aliases_stop_with_their_position() {
        let f = stop_of("a:\n  b: &x 1\n  c: *x\n").expect("anchor");
        assert_eq!(
            (f.stop, f.path.as_str(), f.line, f.column),
            (Stop::Anchor, "a.b", 2, 6)
        );
        let f = stop_of("{\"k\": &a x, \"j\": *a}").expect("flow anchor");
        assert_eq!((f.stop, f.line, f.column), (Stop::Anchor, 1, 7));
        let f = stop_of("[\"a\", *b]").expect("flow alias");
        assert_eq!((f.stop, f.path.as_str(), f.column), (Stop::Alias, "[1]", 7));
        let f = stop_of("- &s [1]\n").expect("sequence anchor");
        assert_eq!((f.stop, f.path.as_str()), (Stop::Anchor, "[0]"));
        let f = stop_of("&m {a: 1}\n").expect("mapping anchor");
        assert_eq!((f.stop, f.path.as_str()), (Stop::Anchor, ""));
        let f = stop_of("? &k a\n: 1\n").expect("anchored key");
        assert_eq!(f.stop, Stop::Anchor);
    }

    #[test]
    fn depth_counts_open_collections() {
        assert_eq!(stop_of("[[[[1]]]]"), None);
        let f = stop_of("[[[[[1]]]]]").expect("too deep");
        assert_eq!(
            (f.stop, f.path.as_str(), f.column),
            (Stop::TooDeep, "[0][0][0][0]", 5)
        );
        let f = stop_of("a:\n  b:\n    - c:\n        - [x]\n").expect("block too deep");
        assert_eq!((f.stop, f.path.as_str()), (Stop::TooDeep, "a.b[0].c"));
        // Depth is per document and drops again when collections close.
        assert_eq!(stop_of("[[[[1]]], [[[2]]]]\n"), None);
    }

    #[test]
    fn long_keys_are_shortened_in_paths() {
        let long = "k".repeat(100_000);
        // An explicit key: libyaml limits implicit ones to 1024 characters.
        let f = stop_of(&format!("? {long}\n: *a\n")).expect("alias");
        assert_eq!(f.path, format!("{}…", "k".repeat(MAX_KEY_CHARS)));
        let f = stop_of(&format!("\"{}\": *a\n", "é".repeat(200))).expect("alias");
        assert_eq!(f.path, format!("{}…", "é".repeat(MAX_KEY_CHARS)));
        let f = stop_of(&format!("{}: *a\n", "é".repeat(MAX_KEY_CHARS))).expect("alias");
        assert_eq!(f.path, "é".repeat(MAX_KEY_CHARS));
    }

    #[test]
    fn syntax_errors_stop_with_libyaml_message() {
        let f = stop_of("a: [1, 2\nb: c\n").expect("syntax");
        let Stop::Syntax(message) = f.stop else {
            panic!("{f:?}");
        };
        assert!(message.contains("line 2 column"), "{message}");
        assert!(message.contains("flow sequence"), "{message}");
    }
}
