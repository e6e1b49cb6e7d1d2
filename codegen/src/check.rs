//! Breaking-change detection between two versions of the contracts, within each major version.
//!
//! Like `buf breaking` (wire and generated-code level) plus the mesh manifest: a consumer
//! written against `order/v1` at one commit must keep working against `order/v1` at any later
//! commit. Breaking changes belong in a new major folder (`order/v2`) beside the old one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use crate::{
    error::Location,
    load::ContractSet,
    model::{Contract, Enum, Message, Method},
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
    /// A field was deleted with its number reserved but not its name: a later version could
    /// give the name to another field, which breaks JSON and generated code
    /// (buf: FIELD_NO_DELETE_UNLESS_NAME_RESERVED).
    FieldNameNotReserved,
    /// A field's JSON name changed (`json_name`): JSON clients break (buf: FIELD_SAME_JSON_NAME).
    FieldJsonNameChanged,
    /// A field's `jstype` or `ctype` changed: JavaScript or C++ code reads it as another type
    /// (buf: FIELD_SAME_JSTYPE, FIELD_SAME_CTYPE).
    FieldTypeOptionChanged,
    /// A standard file option changed, was set or was unset (`go_package`, `java_package`,
    /// `java_multiple_files`, `csharp_namespace`, `optimize_for`, ...): code generated in
    /// other languages moves or changes shape (buf's FILE_SAME_* rules).
    FileOptionChanged,
    /// A oneof disappeared (its fields moved out or went away).
    OneofRemoved,
    /// An enum number now has another name: JSON and generated code break
    /// (buf: ENUM_VALUE_SAME_NAME).
    EnumValueRenamed,
    /// A reserved number or name was taken out of `reserved`: the next change could reuse it
    /// and pass (buf: RESERVED_MESSAGE_NO_DELETE, RESERVED_ENUM_NO_DELETE).
    ReservedRemoved,
    /// An enum value uses a number or name the previous version reserved.
    EnumReservedReused,
    /// A method's `idempotency_level` changed: clients retry or cache by it.
    IdempotencyChanged,
    /// The files' `syntax` changed (field presence and defaults change with it).
    SyntaxChanged,
    /// A capability the manifest listed is gone: tenants and tools that rely on it break.
    CapabilityRemoved,
    /// A method's degraded answer changed: callers see another fallback when it is switched
    /// off. A warning: it is a change to review, not a wire break.
    DegradedAnswerChanged,
    /// A method's timeout went down: callers that took the old bound may now time out. A
    /// warning.
    TimeoutLowered,
    /// A kind of caller the method declared in its `audience` may no longer call it.
    AudienceNarrowed,
    /// A method declared its `audience` for the first time (it was the BACKEND default): who
    /// may call it changes, deliberately. A warning: review who loses access.
    AudienceDeclared,
    /// A declared `audience` gained a kind of caller (end users may now call a backend
    /// method): a warning, to review who gains access.
    AudienceWidened,
}

/// How a change is treated: a breaking one fails `check`; a warning is reported and passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Breaks a consumer written against the previous version: goes into a new major.
    Breaking,
    /// Changes behaviour callers may rely on (manifest fallbacks and bounds): review it.
    Warning,
}

impl BreakingKind {
    /// How `check` treats this kind of change.
    pub fn severity(self) -> Severity {
        match self {
            BreakingKind::DegradedAnswerChanged
            | BreakingKind::TimeoutLowered
            | BreakingKind::AudienceDeclared
            | BreakingKind::AudienceWidened => Severity::Warning,
            _ => Severity::Breaking,
        }
    }
}

impl fmt::Display for BreakingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Breaking => "breaking",
            Severity::Warning => "warning",
        })
    }
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
        write!(
            f,
            "{}: {} {}: {}",
            self.location,
            self.kind.severity(),
            self.kind,
            self.message
        )
    }
}

mod rules;

use rules::*;

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
    // shared types (`common/`) are part of every contract that imports them
    let mut report = Reporter {
        contract: crate::load::SHARED_DIR,
        out: &mut out,
    };
    compare_file_options(
        Types {
            options: &base.shared.file_options,
            messages: &base.shared.messages,
            enums: &base.shared.enums,
        },
        Types {
            options: &head.shared.file_options,
            messages: &head.shared.messages,
            enums: &head.shared.enums,
        },
        None,
        &mut report,
    );
    for (name, om) in &base.shared.messages {
        match head.shared.messages.get(name) {
            None => report.add(
                BreakingKind::MessageRemoved,
                &om.location,
                format!("shared message {name} was removed; contracts may use it"),
            ),
            Some(nm) => compare_message(om, nm, &mut report),
        }
    }
    for (name, oe) in &base.shared.enums {
        match head.shared.enums.get(name) {
            None => report.add(
                BreakingKind::EnumRemoved,
                &oe.location,
                format!("shared enum {name} was removed; contracts may use it"),
            ),
            Some(ne) => compare_enum(oe, ne, &mut report),
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
