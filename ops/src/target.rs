//! What `switch off|on` names: a target from `SWITCH[@tenant]` or from the flags, never both.
//! The names are checked by the mesh against its contracts (so they are always current); this
//! only reads the command line.

use mesh_api::admin::v1 as api;
use mesh_config::switch::SwitchTarget;

use crate::{SwitchArgs, client::CtlError};

/// The target and tenant (`None` = every tenant) `args` name.
pub fn resolve(args: &SwitchArgs) -> Result<(api::SwitchTarget, Option<String>), CtlError> {
    let usage = |m: &str| CtlError::Usage(m.to_owned());
    let flags = args.service.is_some() || args.method.is_some() || args.tier.is_some();
    let (target, tenant) = match &args.switch {
        Some(_) if flags => {
            return Err(usage(
                "name the switch either as SWITCH or with --service/--method/--tier, not both",
            ));
        }
        Some(spec) => {
            let (spec, scoped) = match spec.split_once('@') {
                Some((spec, "all")) => (spec, Some(None)),
                Some((spec, tenant)) => (spec, Some(Some(tenant.to_owned()))),
                None => (spec.as_str(), None),
            };
            let target = match spec.parse::<SwitchTarget>().map_err(CtlError::Usage)? {
                SwitchTarget::Service(service) => api::SwitchTarget {
                    service,
                    ..Default::default()
                },
                SwitchTarget::Method { service, method } => api::SwitchTarget {
                    service,
                    method,
                    tier: None,
                },
                SwitchTarget::TiersFrom(tier) => api::SwitchTarget {
                    tier: Some(tier.into()),
                    ..Default::default()
                },
            };
            let tenant = match (scoped, &args.tenant) {
                (Some(scoped), Some(flag)) if scoped.as_ref() != Some(flag) => {
                    return Err(usage(
                        "the switch's `@tenant` and --tenant name different tenants",
                    ));
                }
                (Some(scoped), _) => scoped,
                (None, flag) => flag.clone(),
            };
            (target, tenant)
        }
        None if !flags => {
            return Err(usage(
                "which switch? e.g. `switch off recommend --tenant mall`, `switch off --tier 2`",
            ));
        }
        None => (
            api::SwitchTarget {
                service: args.service.clone().unwrap_or_default(),
                method: args.method.clone().unwrap_or_default(),
                tier: args.tier,
            },
            args.tenant.clone(),
        ),
    };
    Ok((target, tenant))
}

/// How the mesh writes the switch (`recommend.Suggest@mall`, `tier>=2@all`).
pub fn scope(target: &api::SwitchTarget, tenant: Option<&str>) -> String {
    let what = match (target.tier, target.method.as_str()) {
        (Some(tier), _) => format!("tier>={tier}"),
        (None, "") => target.service.clone(),
        (None, method) => format!("{}.{method}", target.service),
    };
    format!("{what}@{}", tenant.unwrap_or("all"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(switch: Option<&str>, tenant: Option<&str>) -> SwitchArgs {
        SwitchArgs {
            switch: switch.map(Into::into),
            tenant: tenant.map(Into::into),
            tier: None,
            service: None,
            method: None,
            reason: String::new(),
        }
    }

    fn scoped(a: &SwitchArgs) -> String {
        let (target, tenant) = resolve(a).unwrap();
        scope(&target, tenant.as_deref())
    }

    #[test]
    fn a_switch_reads_as_switch_list_prints_it() {
        assert_eq!(
            scoped(&args(Some("recommend@mall"), None)),
            "recommend@mall"
        );
        assert_eq!(scoped(&args(Some("tier>=2@all"), None)), "tier>=2@all");
        assert_eq!(
            scoped(&args(Some("recommend.Suggest"), Some("paipai"))),
            "recommend.Suggest@paipai"
        );
        let mut flags = args(None, Some("mall"));
        flags.tier = Some(2);
        assert_eq!(scoped(&flags), "tier>=2@mall");
        flags.tier = None;
        flags.service = Some("order".into());
        flags.method = Some("GetOrder".into());
        assert_eq!(scoped(&flags), "order.GetOrder@mall");
    }

    #[test]
    fn an_ambiguous_or_missing_switch_is_a_usage_error() {
        let mut both = args(Some("recommend"), None);
        both.tier = Some(2);
        let clash = args(Some("recommend@mall"), Some("paipai"));
        for bad in [
            both,
            clash,
            args(None, Some("mall")),
            args(Some("tier>=two"), None),
        ] {
            let err = resolve(&bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
        }
    }
}
