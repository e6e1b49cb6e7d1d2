//! Reading the `(mesh.*)` options: their descriptors in the compiled pool, and getters over the
//! dynamic messages protobuf reflection hands back.

use super::*;

/// The mesh options on their own, to interpret option literals.
pub(super) fn options_pool() -> Option<DescriptorPool> {
    let mut resolver = ChainFileResolver::new();
    resolver.add(EmbeddedOptions);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.open_file(OPTIONS_PROTO_NAME).ok()?;
    Some(compiler.descriptor_pool())
}

/// The `(mesh.service)` and `(mesh.method)` extensions.
pub(super) struct MeshOptions {
    pub(super) service: Option<ExtensionDescriptor>,
    pub(super) method: Option<ExtensionDescriptor>,
}

impl MeshOptions {
    pub(super) fn new(pool: &DescriptorPool) -> Self {
        Self {
            service: pool.get_extension_by_name("mesh.service"),
            method: pool.get_extension_by_name("mesh.method"),
        }
    }

    /// Field number of an extension, to point at where a file sets it.
    pub(super) fn number(ext: Option<&ExtensionDescriptor>) -> u32 {
        ext.map_or(0, ExtensionDescriptor::number)
    }
}

/// What a contract's `option (mesh.service)` says, checked.
pub(super) struct Manifest {
    pub(super) version: semver::Version,
    pub(super) tier: u32,
    pub(super) owner: String,
    pub(super) capabilities: Vec<String>,
}

pub(super) fn extension(
    options: &DynamicMessage,
    ext: Option<&ExtensionDescriptor>,
) -> Option<DynamicMessage> {
    let ext = ext?;
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).as_ref() {
        Value::Message(m) => Some(m.clone()),
        _ => None,
    }
}

pub(super) fn get_str(m: &DynamicMessage, field: &str) -> String {
    m.get_field_by_name(field)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(super) fn get_u32(m: &DynamicMessage, field: &str) -> Option<u32> {
    if !m.has_field_by_name(field) {
        return None;
    }
    m.get_field_by_name(field).and_then(|v| v.as_u32())
}

/// The name of enum value `number` of `field`'s enum type (`CALL`), as `mesh/options.proto`
/// declares it: the options are read by name, not by bare number.
pub(super) fn enum_name(m: &DynamicMessage, field: &str, number: i32) -> Option<String> {
    match m.descriptor().get_field_by_name(field)?.kind() {
        FieldKind::Enum(e) => e.get_value(number).map(|v| v.name().to_owned()),
        _ => None,
    }
}

/// The value of an enum field, by name (`None` when unset or unknown).
pub(super) fn get_enum(m: &DynamicMessage, field: &str) -> Option<String> {
    let number = m.get_field_by_name(field)?.as_enum_number()?;
    enum_name(m, field, number)
}

/// The values of a repeated enum field, by name (`None` for a number the enum lacks).
pub(super) fn get_enum_list(m: &DynamicMessage, field: &str) -> Vec<Option<String>> {
    m.get_field_by_name(field)
        .and_then(|v| {
            v.as_list().map(|l| {
                l.iter()
                    .filter_map(|v| v.as_enum_number())
                    .map(|n| enum_name(m, field, n))
                    .collect()
            })
        })
        .unwrap_or_default()
}

pub(super) fn get_message(m: &DynamicMessage, field: &str) -> Option<DynamicMessage> {
    if !m.has_field_by_name(field) {
        return None;
    }
    m.get_field_by_name(field)
        .and_then(|v| v.as_message().cloned())
}
