//! The admin contract's messages from and to the control plane's types, and control-plane
//! errors as gRPC statuses.

use std::time::{SystemTime, UNIX_EPOCH};

use mesh_api::admin::v1 as api;
use mesh_runtime::{
    config::ConfigError,
    control::{ControlError, TenantRow},
    layers::{Switch, SwitchTarget},
};
use tonic::Status;

pub(super) fn bus_status(err: mesh_contract::BusError) -> Status {
    match err {
        mesh_contract::BusError::Unavailable(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

pub(super) fn status(err: ControlError) -> Status {
    let message = err.to_string();
    match err {
        ControlError::UnknownTenant(..) => Status::not_found(message),
        ControlError::UnknownSwitch(_) => Status::invalid_argument(message),
        ControlError::NotRun { .. } => Status::failed_precondition(message),
        ControlError::InvalidTenant(ConfigError::Invalid(_)) => Status::invalid_argument(message),
        ControlError::NotApplied(_) => Status::deadline_exceeded(message),
        ControlError::NotServed { .. } | ControlError::Refused(_) => {
            Status::failed_precondition(message)
        }
        ControlError::Shared(_) => Status::unavailable(message),
        ControlError::InvalidTenant(_) | ControlError::Store(_) | ControlError::Io { .. } => {
            Status::internal(message)
        }
    }
}

pub(super) fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn target_to_api(target: &SwitchTarget) -> api::SwitchTarget {
    match target {
        SwitchTarget::Method { service, method } => api::SwitchTarget {
            service: service.clone(),
            method: method.clone(),
            tier: None,
        },
        SwitchTarget::Service(service) => api::SwitchTarget {
            service: service.clone(),
            ..Default::default()
        },
        SwitchTarget::TiersFrom(tier) => api::SwitchTarget {
            tier: Some((*tier).into()),
            ..Default::default()
        },
    }
}

pub(super) fn target_from_api(target: Option<api::SwitchTarget>) -> Result<SwitchTarget, Status> {
    let target = target.unwrap_or_default();
    match (target.service.as_str(), target.method.as_str(), target.tier) {
        ("", "", Some(tier)) => Ok(SwitchTarget::TiersFrom(u8::try_from(tier).map_err(
            |_| {
                Status::invalid_argument(format!(
                    "unknown switch: {tier} is not a tier (0, 1 or 2)"
                ))
            },
        )?)),
        ("", "", None) => Err(Status::invalid_argument(
            "a switch names a service (and maybe a method) or a tier",
        )),
        (service, "", None) if !service.is_empty() => Ok(SwitchTarget::Service(service.into())),
        (service, method, None) if !service.is_empty() => Ok(SwitchTarget::Method {
            service: service.into(),
            method: method.into(),
        }),
        ("", _, _) => Err(Status::invalid_argument(
            "a method switch names its service too",
        )),
        _ => Err(Status::invalid_argument(
            "a switch names a service or a tier, not both",
        )),
    }
}

pub(super) fn switch_to_api(switch: &Switch) -> api::Switch {
    api::Switch {
        target: Some(target_to_api(&switch.target)),
        tenant: switch
            .tenant
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        reason: switch.reason.clone(),
        changed_by: switch.changed_by.clone(),
        changed_at_ms: millis(switch.changed_at),
        scope: switch.scope(),
    }
}

pub(super) fn tenant_to_api(row: &TenantRow) -> api::Tenant {
    api::Tenant {
        id: row.config.id.to_string(),
        display_name: row.config.display_name.clone(),
        group: row.group.clone(),
        pid: row.pid.unwrap_or_default(),
        address: row.address.clone().unwrap_or_default(),
        health: row.state.into(),
        services: row
            .config
            .enabled_services()
            .map(|(name, s)| match &s.grey {
                Some(grey) => format!(
                    "{name}@{}+{}(grey:{}users,{}%)",
                    s.version,
                    grey.version,
                    grey.users.len(),
                    grey.percent
                ),
                None => format!("{name}@{}", s.version),
            })
            .collect(),
        reason: row.reason.clone().unwrap_or_default(),
    }
}

pub(super) fn none_if_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}
