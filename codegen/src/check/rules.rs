// Long on purpose: every breaking-change rule, a function per kind of element, in one list a
// reviewer reads against buf's categories.
//! The rules: what changing a contract, a message, an enum or a file's options breaks (buf's
//! categories, plus the mesh's own: tier, audience, degraded answer, timeout).

use super::*;

/// One side of a file-options comparison: the files' options and the types they declare.
pub(super) struct Types<'a> {
    pub(super) options: &'a BTreeMap<String, BTreeMap<&'static str, String>>,
    pub(super) messages: &'a BTreeMap<String, Message>,
    pub(super) enums: &'a BTreeMap<String, Enum>,
}

impl Types<'_> {
    /// The file (compiler name) declaring the type at `location`.
    fn file_at(&self, location: &Location) -> Option<&String> {
        self.options
            .keys()
            .find(|name| location.file.ends_with(name.as_str()))
    }

    /// Where the first type `file` declares is (the file itself when it declares none).
    fn first_type_in(&self, file: &str) -> Option<Location> {
        let messages = self.messages.values().map(|m| &m.location);
        let enums = self.enums.values().map(|e| &e.location);
        messages
            .chain(enums)
            .filter(|l| l.file.ends_with(file))
            .min_by_key(|l| l.line)
            .cloned()
    }

    /// The files declaring the types `file` declared on the `old` side, most types first: where
    /// a renamed or split file's types went.
    fn successor(&self, old: &Types<'_>, file: &str) -> Option<&String> {
        let mut moved: BTreeMap<&String, usize> = BTreeMap::new();
        let locations =
            old.messages
                .iter()
                .map(|(name, m)| {
                    (
                        name,
                        &m.location,
                        self.messages.get(name).map(|m| &m.location),
                    )
                })
                .chain(old.enums.iter().map(|(name, e)| {
                    (name, &e.location, self.enums.get(name).map(|e| &e.location))
                }));
        for (_, before, after) in locations {
            if !before.file.ends_with(file) {
                continue;
            }
            if let Some(to) = after.and_then(|after| self.file_at(after)) {
                *moved.entry(to).or_default() += 1;
            }
        }
        moved
            .into_iter()
            .max_by_key(|(to, count)| (*count, std::cmp::Reverse(*to)))
            .map(|(to, _)| to)
    }
}

/// buf's FILE_SAME_* rules: every standard file option compared with the same file, or, for a
/// file that was renamed (or merged into another), with the file its types went to, since a
/// rename does not make a `go_package` or `java_package` change harmless.
/// Reported at `at` (a contract's service), or else at the first type the file declares.
pub(super) fn compare_file_options(
    old: Types<'_>,
    new: Types<'_>,
    at: Option<&Location>,
    r: &mut Reporter<'_>,
) {
    for (file, before) in old.options {
        let to = match new.options.get_key_value(file) {
            Some((same, _)) => same,
            None => match new.successor(&old, file) {
                Some(to) => to,
                None => continue, // no type of it is left: the types' own checks report that
            },
        };
        let after = &new.options[to];
        let now = if to == file {
            file.clone()
        } else {
            format!("{file} (now {to})")
        };
        let Some(location) = at.cloned().or_else(|| new.first_type_in(to)) else {
            continue;
        };
        let names: BTreeSet<&&str> = before.keys().chain(after.keys()).collect();
        for option in names {
            let (b, a) = (before.get(option), after.get(option));
            if b != a {
                let shown =
                    |v: Option<&String>| v.map_or_else(|| "unset".to_owned(), |v| format!("{v:?}"));
                r.add(
                    BreakingKind::FileOptionChanged,
                    &location,
                    format!(
                        "file {now}: option {option} changed from {} to {}: code generated from it in other languages moves or changes",
                        shown(b),
                        shown(a)
                    ),
                );
            }
        }
    }
}

pub(super) fn compare_contract(old: &Contract, new: &Contract, r: &mut Reporter<'_>) {
    use BreakingKind::*;
    let (os, ns) = (&old.service, &new.service);
    if os.full_name != ns.full_name {
        r.add(
            ServiceRenamed,
            &ns.location,
            format!("service {} was renamed to {}", os.full_name, ns.full_name),
        );
    }
    if ns.version < os.version {
        r.add(
            VersionDecreased,
            &ns.location,
            format!("version went from {} back to {}", os.version, ns.version),
        );
    }
    compare_file_options(
        Types {
            options: &old.file_options,
            messages: &old.messages,
            enums: &old.enums,
        },
        Types {
            options: &new.file_options,
            messages: &new.messages,
            enums: &new.enums,
        },
        Some(&ns.location),
        r,
    );
    if old.syntax != new.syntax {
        r.add(
            SyntaxChanged,
            &ns.location,
            format!(
                "syntax changed from {} to {}: field presence and defaults change with it",
                old.syntax, new.syntax
            ),
        );
    }
    for capability in &os.capabilities {
        if !ns.capabilities.contains(capability) {
            r.add(
                CapabilityRemoved,
                &ns.location,
                format!("capability {capability} was removed from the manifest"),
            );
        }
    }
    if ns.tier > os.tier {
        r.add(
            TierLowered,
            &ns.location,
            format!("tier lowered from {} to {}: callers relying on its availability would be degraded first", os.tier, ns.tier),
        );
    }
    for om in &os.methods {
        let Some(nm) = ns.methods.iter().find(|m| m.name == om.name) else {
            r.add(
                MethodRemoved,
                &om.location,
                format!(
                    "{} {}.{} was removed",
                    om.kind.as_str(),
                    os.full_name,
                    om.name
                ),
            );
            continue;
        };
        compare_method(om, nm, &format!("{}.{}", ns.full_name, nm.name), r);
    }
    for (name, om) in &old.messages {
        match new.messages.get(name) {
            None => r.add(
                MessageRemoved,
                &om.location,
                format!("message {name} was removed"),
            ),
            Some(nm) => compare_message(om, nm, r),
        }
    }
    for (name, oe) in &old.enums {
        match new.enums.get(name) {
            None => r.add(
                EnumRemoved,
                &oe.location,
                format!("enum {name} was removed"),
            ),
            Some(ne) => compare_enum(oe, ne, r),
        }
    }
}

/// One call or event against its previous self: kind, types, streaming, audience, degraded
/// answer, timeout.
pub(super) fn compare_method(om: &Method, nm: &Method, what: &str, r: &mut Reporter<'_>) {
    use BreakingKind::*;
    if om.kind != nm.kind {
        r.add(
            MethodKindChanged,
            &nm.location,
            format!(
                "{what} changed from {} to {}",
                om.kind.as_str(),
                nm.kind.as_str()
            ),
        );
    }
    if om.input != nm.input {
        r.add(
            MethodTypeChanged,
            &nm.location,
            format!("{what} input changed from {} to {}", om.input, nm.input),
        );
    }
    if om.output != nm.output {
        r.add(
            MethodTypeChanged,
            &nm.location,
            format!("{what} output changed from {} to {}", om.output, nm.output),
        );
    }
    if (om.client_streaming, om.server_streaming) != (nm.client_streaming, nm.server_streaming) {
        r.add(
            MethodStreamingChanged,
            &nm.location,
            format!(
                "{what} changed from {} to {}",
                streaming(om.client_streaming, om.server_streaming),
                streaming(nm.client_streaming, nm.server_streaming)
            ),
        );
    }
    if om.idempotency != nm.idempotency {
        r.add(
            IdempotencyChanged,
            &nm.location,
            format!(
                "{what} idempotency_level changed from {} to {}",
                om.idempotency, nm.idempotency
            ),
        );
    }
    if om.degraded != nm.degraded {
        r.add(
            DegradedAnswerChanged,
            &nm.location,
            format!(
                "{what} degraded answer changed from {} to {}",
                degraded(om.degraded.as_ref()),
                degraded(nm.degraded.as_ref())
            ),
        );
    }
    compare_audience(om, nm, what, r);
    if let (Some(before), Some(after)) = (om.timeout_ms, nm.timeout_ms)
        && after < before
    {
        r.add(
            TimeoutLowered,
            &nm.location,
            format!("{what} timeout_ms went down from {before} to {after}"),
        );
    }
    if let (Some(ms), None) = (om.timeout_ms, nm.timeout_ms) {
        r.add(
            TimeoutRemoved,
            &nm.location,
            format!("{what} lost its timeout_ms ({ms} ms)"),
        );
    }
}

/// Who may call: one rule whether the audience was declared or the default ([BACKEND]).
fn compare_audience(om: &Method, nm: &Method, what: &str, r: &mut Reporter<'_>) {
    use BreakingKind::*;
    let names =
        |a: &[crate::model::Audience]| a.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ");
    // one rule whether the audience was declared or the default ([BACKEND]): a kind of
    // caller that could call and no longer can is a break; one that gains access is a
    // change to review when the default is replaced by a declaration
    let lost: Vec<_> = om
        .audience()
        .into_iter()
        .filter(|a| !nm.audience().contains(a))
        .collect();
    let was = |m: &crate::model::Method| {
        if m.declared_audience.is_empty() {
            "the default, [BACKEND]".to_owned()
        } else {
            format!("[{}]", names(&m.audience()))
        }
    };
    if !lost.is_empty() {
        r.add(
            AudienceNarrowed,
            &nm.location,
            format!(
                "{what} audience narrowed from {} to [{}]: {} callers lose access",
                was(om),
                names(&nm.audience()),
                names(&lost)
            ),
        );
    } else if !om.declared_audience.is_empty() && nm.audience().len() > om.audience().len() {
        let gained: Vec<_> = nm
            .audience()
            .into_iter()
            .filter(|a| !om.audience().contains(a))
            .collect();
        r.add(
            AudienceWidened,
            &nm.location,
            format!(
                "{what} audience widened from [{}] to [{}]: {} callers gain access",
                names(&om.audience()),
                names(&nm.audience()),
                names(&gained)
            ),
        );
    } else if om.declared_audience.is_empty()
        && !nm.declared_audience.is_empty()
        && nm.audience() != om.audience()
    {
        r.add(
            AudienceDeclared,
            &nm.location,
            format!(
                "{what} audience declared: [{}] (was the default, [BACKEND])",
                names(&nm.declared_audience)
            ),
        );
    }
}

pub(super) fn compare_message(old: &Message, new: &Message, r: &mut Reporter<'_>) {
    use BreakingKind::*;
    let name = &old.full_name;
    for of in &old.fields {
        if let Some(nf) = new
            .fields
            .iter()
            .find(|f| f.name == of.name && f.number != of.number)
        {
            r.add(
                FieldRenumbered,
                &nf.location,
                format!(
                    "field {name}.{} was renumbered from {} to {}",
                    of.name, of.number, nf.number
                ),
            );
            continue;
        }
        let Some(nf) = new.fields.iter().find(|f| f.number == of.number) else {
            if !new.reserves_number(of.number) {
                r.add(
                    FieldRemoved,
                    &of.location,
                    format!("field {name}.{} = {} was removed; to delete a field, reserve its number and name", of.name, of.number),
                );
            } else if !new.reserved_names.contains(&of.name)
                && !new.fields.iter().any(|f| f.name == of.name)
            {
                r.add(
                    FieldNameNotReserved,
                    &new.location,
                    format!(
                        "field {name}.{} = {} was deleted with its number reserved but not its name; add `reserved \"{}\";`",
                        of.name, of.number, of.name
                    ),
                );
            }
            continue;
        };
        compare_field(name, of, nf, r);
    }
    for (oneof, location) in &old.oneofs {
        if !new.oneofs.iter().any(|(o, _)| o == oneof) {
            r.add(
                OneofRemoved,
                location,
                format!("oneof {name}.{oneof} was removed"),
            );
        }
    }
    compare_reserved(old, new, r);
}

/// A field against its previous self (same number): name, type, label, oneof, the options that
/// change its type in other languages, its JSON name.
fn compare_field(
    name: &str,
    of: &crate::model::Field,
    nf: &crate::model::Field,
    r: &mut Reporter<'_>,
) {
    use BreakingKind::*;
    if nf.name != of.name {
        r.add(
            FieldRenamed,
            &nf.location,
            format!(
                "field {name} #{} was renamed from {} to {}",
                of.number, of.name, nf.name
            ),
        );
    }
    if nf.ty != of.ty {
        r.add(
            FieldTypeChanged,
            &nf.location,
            format!(
                "field {name}.{} changed type from {} to {}",
                nf.name, of.ty, nf.ty
            ),
        );
    }
    if nf.label != of.label {
        r.add(
            FieldLabelChanged,
            &nf.location,
            format!(
                "field {name}.{} changed from {} to {}",
                nf.name, of.label, nf.label
            ),
        );
    }
    if nf.oneof != of.oneof {
        let place = |oneof: &Option<String>| match oneof {
            Some(o) => format!("oneof {o}"),
            None => "outside any oneof".to_owned(),
        };
        r.add(
            FieldOneofChanged,
            &nf.location,
            format!(
                "field {name}.{} moved from {} to {}",
                nf.name,
                place(&of.oneof),
                place(&nf.oneof)
            ),
        );
    }
    for (option, before, after) in [
        ("jstype", &of.jstype, &nf.jstype),
        ("ctype", &of.ctype, &nf.ctype),
    ] {
        if before != after {
            let shown = |v: &str| {
                if v.is_empty() {
                    "unset".to_owned()
                } else {
                    v.to_owned()
                }
            };
            r.add(
                FieldTypeOptionChanged,
                &nf.location,
                format!(
                    "field {name}.{} changed {option} from {} to {}: code in other languages reads it as another type",
                    nf.name,
                    shown(before),
                    shown(after)
                ),
            );
        }
    }
    if nf.name == of.name && nf.json_name != of.json_name {
        r.add(
            FieldJsonNameChanged,
            &nf.location,
            format!(
                "field {name}.{} changed its JSON name from {} to {}",
                nf.name, of.json_name, nf.json_name
            ),
        );
    }
}

/// What a message reserved stays reserved, and nothing it reserved is used again.
fn compare_reserved(old: &Message, new: &Message, r: &mut Reporter<'_>) {
    use BreakingKind::*;
    let name = &old.full_name;
    for range in &old.reserved_numbers {
        let dropped: Vec<u32> = range
            .clone()
            .filter(|n| !new.reserves_number(*n) && !new.fields.iter().any(|f| f.number == *n))
            .collect();
        if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
            let numbers = if first == last {
                format!("number {first}")
            } else {
                format!("numbers {first} to {last}")
            };
            r.add(
                ReservedRemoved,
                &new.location,
                format!("message {name} no longer reserves {numbers}: the next change could reuse them unnoticed"),
            );
        }
    }
    for reserved in &old.reserved_names {
        if !new.reserved_names.contains(reserved) && !new.fields.iter().any(|f| &f.name == reserved)
        {
            r.add(
                ReservedRemoved,
                &new.location,
                format!("message {name} no longer reserves the name {reserved}: the next change could reuse it unnoticed"),
            );
        }
    }
    for nf in &new.fields {
        if old.reserves_number(nf.number) {
            r.add(
                ReservedTagReused,
                &nf.location,
                format!(
                    "field {name}.{} uses number {}, which the previous version reserved",
                    nf.name, nf.number
                ),
            );
        }
        if old.reserved_names.contains(&nf.name) {
            r.add(
                ReservedNameReused,
                &nf.location,
                format!(
                    "field {name}.{} uses a name the previous version reserved",
                    nf.name
                ),
            );
        }
    }
}

pub(super) fn compare_enum(old: &Enum, new: &Enum, r: &mut Reporter<'_>) {
    use BreakingKind::*;
    let name = &old.full_name;
    for (value, number, location) in &old.values {
        if let Some((_, n, l)) = new
            .values
            .iter()
            .find(|(v, n, _)| v == value && n != number)
        {
            r.add(
                EnumValueRenumbered,
                l,
                format!("enum value {name}.{value} was renumbered from {number} to {n}"),
            );
        } else if let Some((renamed, _, l)) = new
            .values
            .iter()
            .find(|(v, n, _)| n == number && v != value)
            && !new.values.iter().any(|(v, _, _)| v == value)
        {
            r.add(
                EnumValueRenamed,
                l,
                format!("enum value {name} = {number} was renamed from {value} to {renamed}"),
            );
        } else if !new.values.iter().any(|(_, n, _)| n == number)
            && !new
                .reserved_numbers
                .iter()
                .any(|range| range.contains(number))
        {
            r.add(EnumValueRemoved, location, format!("enum value {name}.{value} = {number} was removed; reserve its number to delete it"));
        }
    }
    for range in &old.reserved_numbers {
        if let Some(number) = range.clone().find(|n| {
            !new.reserved_numbers.iter().any(|r| r.contains(n))
                && !new.values.iter().any(|(_, v, _)| v == n)
        }) {
            r.add(
                ReservedRemoved,
                &new.location,
                format!("enum {name} no longer reserves number {number}: the next change could reuse it unnoticed"),
            );
        }
    }
    for reserved in &old.reserved_names {
        if !new.reserved_names.contains(reserved)
            && !new.values.iter().any(|(v, _, _)| v == reserved)
        {
            r.add(
                ReservedRemoved,
                &new.location,
                format!("enum {name} no longer reserves the name {reserved}: the next change could reuse it unnoticed"),
            );
        }
    }
    for (value, number, location) in &new.values {
        if old.reserved_numbers.iter().any(|r| r.contains(number)) {
            r.add(
                EnumReservedReused,
                location,
                format!("enum value {name}.{value} uses number {number}, which the previous version reserved"),
            );
        }
        if old.reserved_names.contains(value) {
            r.add(
                EnumReservedReused,
                location,
                format!("enum value {name}.{value} uses a name the previous version reserved"),
            );
        }
    }
}

/// A method's streaming, in words.
pub(super) fn streaming(client: bool, server: bool) -> &'static str {
    match (client, server) {
        (false, false) => "unary",
        (true, false) => "client streaming",
        (false, true) => "server streaming",
        (true, true) => "bidirectional streaming",
    }
}

/// A degraded answer, as the contract writes it.
pub(super) fn degraded(answer: Option<&crate::model::Degraded>) -> String {
    use crate::model::Degraded;
    match answer {
        None => "the default (UNAVAILABLE)".into(),
        Some(Degraded::Empty) => "`empty`".into(),
        Some(Degraded::Error { code, message }) => {
            format!("`error {{ code: {code} message: {message:?} }}`")
        }
        Some(Degraded::Cached { max_age_ms }) => format!("`cached {{ max_age_ms: {max_age_ms} }}`"),
    }
}
