//! Interleaved mode: sub-documents and arrays holding values (`BSONColumnBuilder::
//! _appendObj` and its helpers in `bsoncolumnbuilder.cpp`).
//!
//! The builder first determines a reference object, a superset of the fields of the
//! objects it sees in order (`mergeObj`), buffering objects while the reference has at
//! least half as many scalar fields as objects are buffered. It then writes a control byte
//! (0xF1 for an object, 0xF2 for an array root) and the reference object, and encodes
//! every scalar field of the reference as its own stream, starting from the reference's
//! value (no literal) and skipping the field when an object lacks it. Objects whose
//! fields are not in the reference's order, or that change a field between scalar and
//! sub-object, end the run (`traverseLockStep`). When the run ends, the streams' control
//! blocks are written in the order a decoder needs them: the stream that has handed out
//! the fewest values first (ties: the earlier field), then 0x00.

use bson::Bson;

use super::simple8b::block_count;
use super::{Elem, Regular};

/// A value as the builder walks it: a scalar, or an object/array with named fields.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Scalar(Bson),
    Obj {
        array: bool,
        fields: Vec<(String, Node)>,
    },
}

impl Node {
    pub(crate) fn of(v: &Bson) -> Node {
        match v {
            Bson::Document(d) => Node::Obj {
                array: false,
                fields: d.iter().map(|(k, v)| (k.clone(), Node::of(v))).collect(),
            },
            Bson::Array(a) => Node::Obj {
                array: true,
                fields: a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), Node::of(v)))
                    .collect(),
            },
            other => Node::Scalar(other.clone()),
        }
    }

    fn fields(&self) -> &[(String, Node)] {
        match self {
            Node::Obj { fields, .. } => fields,
            Node::Scalar(_) => &[],
        }
    }

    /// The BSON bytes of an object node (fields with their types and names).
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 0];
        for (name, n) in self.fields() {
            let (t, v) = match n {
                Node::Scalar(s) => {
                    let e = Elem::of(s);
                    (e.t, e.v)
                }
                Node::Obj { array, .. } => (if *array { 0x04 } else { 0x03 }, n.bytes()),
            };
            out.push(t);
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(&v);
        }
        out.push(0);
        let len = (out.len() as i32).to_le_bytes();
        out[..4].copy_from_slice(&len);
        out
    }
}

/// `_containsScalars`.
pub(crate) fn contains_scalars(n: &Node) -> bool {
    match n {
        Node::Scalar(_) => true,
        Node::Obj { fields, .. } => fields.iter().any(|(_, f)| contains_scalars(f)),
    }
}

type Visit<'a> = dyn FnMut(&Node, Option<&Node>) + 'a;

/// `_traverseUntilEmptyObj`: visits the scalars as missing; true at an empty object.
fn until_empty(fields: &[(String, Node)], f: &mut Visit<'_>) -> bool {
    for (_, n) in fields {
        match n {
            Node::Obj { fields: sub, .. } => {
                if until_empty(sub, f) {
                    return true;
                }
            }
            Node::Scalar(_) => f(n, None),
        }
    }
    fields.is_empty()
}

/// `_hasEmptyObj`.
pub(crate) fn has_empty_obj(n: &Node) -> bool {
    until_empty(n.fields(), &mut |_, _| {})
}

/// `_traverseLockStep`: (position reached in `obj`, compatible so far).
fn lock_step(
    reference: &[(String, Node)],
    obj: &[(String, Node)],
    f: &mut Visit<'_>,
) -> (usize, bool) {
    let mut it = 0;
    for (name, r) in reference {
        let same = it < obj.len() && obj[it].0 == *name;
        match r {
            Node::Obj { array, fields: rf } => {
                if same {
                    let Node::Obj {
                        array: oa,
                        fields: of,
                    } = &obj[it].1
                    else {
                        return (it, false);
                    };
                    if oa != array || rf.is_empty() != of.is_empty() {
                        return (it, false);
                    }
                    it += 1;
                    if !lock_step(rf, of, f).1 {
                        return (it, false);
                    }
                } else if until_empty(rf, f) {
                    return (it, false);
                }
            }
            Node::Scalar(_) => {
                if same && matches!(obj[it].1, Node::Obj { .. }) {
                    return (it, false);
                }
                if same {
                    it += 1;
                    f(r, Some(&obj[it - 1].1));
                } else {
                    f(r, None);
                }
            }
        }
    }
    (it, it == obj.len())
}

/// `traverseLockStep`: true when `obj` fits `reference`, calling `f` per scalar of the
/// reference with `obj`'s value or `None`.
pub(crate) fn traverse(reference: &Node, obj: &Node, f: &mut Visit<'_>) -> bool {
    lock_step(reference.fields(), obj.fields(), f).1
}

fn is_obj(n: &Node) -> bool {
    matches!(n, Node::Obj { .. })
}

fn has(builder: &[(String, Node)], name: &str) -> bool {
    builder.iter().any(|(n, _)| n == name)
}

/// `_mergeObj`.
fn merge_fields(
    builder: &mut Vec<(String, Node)>,
    reference: &[(String, Node)],
    obj: &[(String, Node)],
) -> bool {
    let (mut ri, mut oi) = (0, 0);
    while ri < reference.len() && oi < obj.len() {
        let (name, r) = &reference[ri];
        if *name == obj[oi].0 {
            let o = &obj[oi].1;
            match (r, o) {
                (
                    Node::Obj { array, fields: rf },
                    Node::Obj {
                        array: oa,
                        fields: of,
                    },
                ) if array == oa => {
                    if rf.is_empty() != of.is_empty() || has(builder, name) {
                        return false;
                    }
                    let mut sub = Vec::new();
                    if !merge_fields(&mut sub, rf, of) {
                        return false;
                    }
                    builder.push((
                        name.clone(),
                        Node::Obj {
                            array: *array,
                            fields: sub,
                        },
                    ));
                }
                _ if is_obj(r) || is_obj(o) => return false,
                _ => {
                    if has(builder, name) {
                        return false;
                    }
                    builder.push(reference[ri].clone());
                }
            }
            ri += 1;
            oi += 1;
            continue;
        }
        let later = obj[oi + 1..].iter().any(|(n, _)| n == name);
        let take = if later { &obj[oi] } else { &reference[ri] };
        if (is_obj(&take.1) && has_empty_obj(&take.1)) || has(builder, &take.0) {
            return false;
        }
        builder.push(take.clone());
        if later {
            oi += 1;
        } else {
            ri += 1;
        }
    }
    for rest in reference[ri..].iter().chain(&obj[oi..]) {
        if (is_obj(&rest.1) && has_empty_obj(&rest.1)) || has(builder, &rest.0) {
            return false;
        }
        builder.push(rest.clone());
    }
    true
}

/// `mergeObj`: the reference extended with `obj`'s fields, or `None` when incompatible.
pub(crate) fn merge(reference: &Node, obj: &Node) -> Option<Node> {
    let Node::Obj { array, fields } = reference else {
        return None;
    };
    let mut out = Vec::new();
    merge_fields(&mut out, fields, obj.fields()).then_some(Node::Obj {
        array: *array,
        fields: out,
    })
}

/// One scalar field's stream.
#[derive(Clone, Debug)]
pub(crate) struct SubState {
    state: Regular,
    buf: Vec<u8>,
}

/// The interleaved state (`InternalState::Interleaved`).
#[derive(Clone, Debug)]
pub(crate) struct Interleaved {
    pub(crate) determining: bool,
    pub(crate) reference: Node,
    pub(crate) buffered: Vec<Node>,
    states: Vec<SubState>,
}

impl Interleaved {
    /// Starts determining the reference with `obj` (`_startDetermineSubObjReference`).
    pub(crate) fn start(obj: Node) -> Interleaved {
        Interleaved {
            determining: true,
            reference: obj.clone(),
            buffered: vec![obj],
            states: Vec::new(),
        }
    }

    pub(crate) fn root_array(&self) -> bool {
        matches!(self.reference, Node::Obj { array: true, .. })
    }

    /// `_finishDetermineSubObjReference`: writes the start and the reference, then encodes
    /// the buffered objects.
    pub(crate) fn finish_determining(&mut self, out: &mut Vec<u8>) {
        out.push(if self.root_array() { 0xF2 } else { 0xF1 });
        out.extend_from_slice(&self.reference.bytes());
        let buffered = std::mem::take(&mut self.buffered);
        let mut states = Vec::new();
        if let Some(first) = buffered.first() {
            traverse(&self.reference, first, &mut |r, e| {
                let Node::Scalar(rv) = r else { return };
                let mut s = SubState {
                    state: Regular::continuing(Elem::of(rv)),
                    buf: Vec::new(),
                };
                match e {
                    Some(Node::Scalar(v)) => s.state.append(Elem::of(v), &mut s.buf),
                    _ => s.state.skip(&mut s.buf),
                }
                states.push(s);
            });
        }
        self.states = states;
        self.determining = false;
        for obj in &buffered[1.min(buffered.len())..] {
            self.append_sub_elements(obj);
        }
    }

    /// `_appendSubElements` without the flush: false when `obj` does not fit.
    pub(crate) fn append_sub_elements(&mut self, obj: &Node) -> bool {
        let mut flat: Vec<Option<Bson>> = Vec::new();
        if !traverse(&self.reference, obj, &mut |_, e| {
            flat.push(match e {
                Some(Node::Scalar(v)) => Some(v.clone()),
                _ => None,
            })
        }) {
            return false;
        }
        for (s, v) in self.states.iter_mut().zip(flat) {
            match v {
                Some(v) => s.state.append(Elem::of(&v), &mut s.buf),
                None => s.state.skip(&mut s.buf),
            }
        }
        true
    }

    /// A missing object: a skip in every stream.
    pub(crate) fn skip_all(&mut self) {
        for s in &mut self.states {
            s.state.skip(&mut s.buf);
        }
    }

    /// `_flushSubObjMode`: writes the run to `out`.
    pub(crate) fn flush(mut self, out: &mut Vec<u8>) {
        if self.determining {
            self.finish_determining(out);
        }
        for s in &mut self.states {
            s.state.flush(&mut s.buf);
        }
        // (values handed out, next block) per stream; the fewest values first.
        let mut progress: Vec<(u64, usize)> = vec![(0, 0); self.states.len()];
        loop {
            let next = progress
                .iter()
                .enumerate()
                .filter(|(i, (_, b))| *b < self.states[*i].state.blocks.len())
                .min_by_key(|(i, (n, _))| (*n, *i))
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            let (at, len) = self.states[i].state.blocks[progress[i].1];
            let block = &self.states[i].buf[at..at + len];
            out.extend_from_slice(block);
            progress[i].1 += 1;
            progress[i].0 += elems_in_block(block);
        }
        out.push(0);
    }
}

/// `numElemsForControlByte`: 1 for a literal, else the values of its Simple-8b blocks.
fn elems_in_block(block: &[u8]) -> u64 {
    let c = block[0];
    if c & 0xE0 == 0 || c == 0xFF || c == 0x7F {
        return 1;
    }
    block[1..]
        .chunks_exact(8)
        .map(|w| block_count(u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))))
        .sum()
}
