//! Breaking-change detection between two versions of the contracts, within each major version.
//!
//! Like `buf breaking` (wire and generated-code level) plus the mesh manifest: a consumer
//! written against `order/v1` at one commit must keep working against `order/v1` at any later
//! commit. Breaking changes belong in a new major folder (`order/v2`) beside the old one.

use std::fmt;

use crate::{
    error::Location,
    load::ContractSet,
    model::{Contract, Enum, Message},
};

/// The kinds of breaking change detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BreakingKind {
    /// A contract folder (a major version) disappeared.
    ContractRemoved,
    /// The service's protobuf name changed (its gRPC paths with it).
    ServiceRenamed,
    /// The manifest version went backwards.
    VersionDecreased,
    /// The tier number went up: the service became less critical and degrades earlier.
    TierLowered,
    /// A call or event disappeared.
    MethodRemoved,
    /// A call became an event or the other way round.
    MethodKindChanged,
    /// A method's input or output type changed.
    MethodTypeChanged,
    /// A method started or stopped streaming.
    MethodStreamingChanged,
    /// A method lost its deadline.
    TimeoutRemoved,
    /// A message disappeared.
    MessageRemoved,
    /// A field disappeared without its number being reserved.
    FieldRemoved,
    /// A field kept its name but changed its number.
    FieldRenumbered,
    /// A field number now has another name (generated code and JSON break).
    FieldRenamed,
    /// A field's type changed.
    FieldTypeChanged,
    /// A field became repeated, optional or singular.
    FieldLabelChanged,
    /// A field moved into or out of a oneof.
    FieldOneofChanged,
    /// A field uses a number the previous version reserved.
    ReservedTagReused,
    /// A field uses a name the previous version reserved.
    ReservedNameReused,
    /// An enum disappeared.
    EnumRemoved,
    /// An enum value disappeared without its number being reserved.
    EnumValueRemoved,
    /// An enum value kept its name but changed its number.
    EnumValueRenumbered,
}

/// One breaking change, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakingChange {
    /// Contract folder (`order/v1`).
    pub contract: String,
    /// What kind.
    pub kind: BreakingKind,
    /// Where: in the new version if the element still exists, else in the old one.
    pub location: Location,
    /// What changed, naming the element and both values.
    pub message: String,
}

impl fmt::Display for BreakingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}: {}", self.location, self.kind, self.message)
    }
}

/// Every breaking change from `base` (the previous version) to `head` (the new one). Contracts
/// that only exist in `head` (new services, new majors) are new, hence never breaking.
pub fn compare(base: &ContractSet, head: &ContractSet) -> Vec<BreakingChange> {
    let mut out = Vec::new();
    for old in &base.contracts {
        let mut report = Reporter {
            contract: &old.dir,
            out: &mut out,
        };
        match head.get(&old.dir) {
            None => report.add(
                BreakingKind::ContractRemoved,
                &old.service.location,
                format!(
                    "contract {} was removed; tenants may run it. Keep it until no tenant config names it",
                    old.dir
                ),
            ),
            Some(new) => compare_contract(old, new, &mut report),
        }
    }
    out
}

struct Reporter<'a> {
    contract: &'a str,
    out: &'a mut Vec<BreakingChange>,
}

impl Reporter<'_> {
    fn add(&mut self, kind: BreakingKind, location: &Location, message: String) {
        self.out.push(BreakingChange {
            contract: self.contract.to_owned(),
            kind,
            location: location.clone(),
            message,
        });
    }
}

fn compare_contract(old: &Contract, new: &Contract, r: &mut Reporter<'_>) {
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
        let what = format!("{}.{}", ns.full_name, nm.name);
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
        if (om.client_streaming, om.server_streaming) != (nm.client_streaming, nm.server_streaming)
        {
            r.add(
                MethodStreamingChanged,
                &nm.location,
                format!(
                    "{what} changed streaming (client, server) from {:?} to {:?}",
                    (om.client_streaming, om.server_streaming),
                    (nm.client_streaming, nm.server_streaming)
                ),
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

fn compare_message(old: &Message, new: &Message, r: &mut Reporter<'_>) {
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
            }
            continue;
        };
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
            r.add(
                FieldOneofChanged,
                &nf.location,
                format!(
                    "field {name}.{} moved from oneof {:?} to {:?}",
                    nf.name, of.oneof, nf.oneof
                ),
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

fn compare_enum(old: &Enum, new: &Enum, r: &mut Reporter<'_>) {
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
        } else if !new.values.iter().any(|(_, n, _)| n == number)
            && !new
                .reserved_numbers
                .iter()
                .any(|range| range.contains(number))
        {
            r.add(EnumValueRemoved, location, format!("enum value {name}.{value} = {number} was removed; reserve its number to delete it"));
        }
    }
}
