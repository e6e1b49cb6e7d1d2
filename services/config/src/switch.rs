//! Degradation switches as ops and tenant files name them: what a switch turns off
//! ([`SwitchTarget`]: a method, a service, or a tier and every less important one) and a switch
//! that is off ([`Switch`]: for whom, why, by whom, since when). The runtime's switch board
//! applies them; this is what `meshctl` parses and checks.

use std::time::SystemTime;

use mesh_contract::{ContractSpec, TenantId};

/// What a switch turns off.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchTarget {
    /// One method of a service (any major version).
    Method {
        /// Service name (`recommend`).
        service: String,
        /// Method name (`Suggest`).
        method: String,
    },
    /// Every method of a service.
    Service(String),
    /// Every service of this tier and of every less important one (2 = optional only).
    TiersFrom(u8),
}

impl std::fmt::Display for SwitchTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchTarget::Method { service, method } => write!(f, "{service}.{method}"),
            SwitchTarget::Service(service) => write!(f, "{service}"),
            SwitchTarget::TiersFrom(tier) => write!(f, "tier>={tier}"),
        }
    }
}

/// Reads a target as [`Display`](std::fmt::Display) writes it: `recommend`, `recommend.Suggest`,
/// `tier>=2`. Names are checked against a catalogue by [`SwitchTarget::validate`], not here.
impl std::str::FromStr for SwitchTarget {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let word = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if let Some(tier) = spec.strip_prefix("tier>=") {
            return tier.parse().map(SwitchTarget::TiersFrom).map_err(|_| {
                format!("{spec:?}: `tier>=N` takes a tier number (0 = core, 1, 2 = optional)")
            });
        }
        match spec.split_once('.') {
            None if word(spec) => Ok(SwitchTarget::Service(spec.into())),
            Some((service, method)) if word(service) && word(method) => Ok(SwitchTarget::Method {
                service: service.into(),
                method: method.into(),
            }),
            _ => Err(format!(
                "{spec:?} is not a switch: write a service (`recommend`), a method \
                 (`recommend.Suggest`) or a tier and every less important one (`tier>=2`)"
            )),
        }
    }
}

impl SwitchTarget {
    /// Checks the target names something the catalogue has: an error says what is unknown.
    pub fn validate(&self, catalogue: &[&ContractSpec]) -> Result<(), String> {
        let services: Vec<&str> = catalogue.iter().map(|s| s.name).collect();
        let known_service = |name: &str| {
            if services.contains(&name) {
                Ok(())
            } else {
                let mut known = services.clone();
                known.sort_unstable();
                known.dedup();
                Err(format!(
                    "unknown service {name:?}; known services: {}",
                    known.join(", ")
                ))
            }
        };
        match self {
            SwitchTarget::Service(service) => known_service(service),
            SwitchTarget::Method { service, method } => {
                known_service(service)?;
                let methods: Vec<&str> = catalogue
                    .iter()
                    .filter(|s| s.name == service)
                    .flat_map(|s| s.methods.iter().map(|m| m.name))
                    .collect();
                if methods.contains(&method.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "{service} has no method {method:?}; its methods: {}",
                        methods.join(", ")
                    ))
                }
            }
            SwitchTarget::TiersFrom(tier) if *tier > mesh_contract::Tier::MAX => Err(format!(
                "{tier} is not a tier (0 = core, 1, {} = optional)",
                mesh_contract::Tier::MAX
            )),
            SwitchTarget::TiersFrom(_) => Ok(()),
        }
    }
}

/// One switch that is off.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Switch {
    /// The tenant it applies to; `None` for every tenant.
    pub tenant: Option<TenantId>,
    /// What it turns off.
    pub target: SwitchTarget,
    /// Why (shown to ops).
    pub reason: String,
    /// Who turned it off (an operator, `config`, or an automatic rule).
    pub changed_by: String,
    /// When.
    pub changed_at: SystemTime,
}

impl Switch {
    /// How the switch reads for people: `recommend@mall`, `tier>=2@all`.
    pub fn scope(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("{}@{tenant}", self.target),
            None => format!("{}@all", self.target),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_reads_back_as_it_is_written() {
        for target in [
            SwitchTarget::Service("recommend".into()),
            SwitchTarget::Method {
                service: "recommend".into(),
                method: "Suggest".into(),
            },
            SwitchTarget::TiersFrom(2),
        ] {
            assert_eq!(target.to_string().parse::<SwitchTarget>(), Ok(target));
        }
        for bad in [
            "",
            "tier>=x",
            "recommend.",
            ".Suggest",
            "a.b.c",
            "rec ommend",
            "tier>=-1",
        ] {
            let err = bad.parse::<SwitchTarget>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
