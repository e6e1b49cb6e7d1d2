//! Which HTTP path is which call: read from the contracts (their `ContractSpec`s and the
//! descriptor set codegen builds from the same `.proto` files), so a call added to a contract
//! is reachable over HTTP/JSON with nothing written by hand.

use std::collections::BTreeMap;

use mesh_contract::{ContractSpec, MethodSpec};
use prost_reflect::{DescriptorPool, MessageDescriptor};

/// One call reachable over HTTP: `POST /<contract>/v<major>/<Method>`.
#[derive(Clone, Debug)]
pub struct Route {
    /// `/message/v1/Send`.
    pub http_path: String,
    /// The contract it belongs to.
    pub contract: &'static ContractSpec,
    /// The call as the contract declares it (`path` is the gRPC path it is forwarded to).
    pub method: &'static MethodSpec,
    /// The request message, parsed from the JSON body.
    pub input: MessageDescriptor,
    /// The response message, written as the JSON body (each one an event of a server stream).
    pub output: MessageDescriptor,
}

impl Route {
    /// Whether the call answers a stream (served as server-sent events).
    pub fn streams(&self) -> bool {
        self.method.server_streaming
    }
}

/// Why the routes could not be built: a contract and the descriptor set disagree (they come
/// from one build, so this is a packaging mistake, said once at start).
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The descriptor set does not decode.
    #[error("the contracts' descriptor set does not decode: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// A contract's service or call is missing from the descriptor set.
    #[error("{0} is in the contracts but not in their descriptor set")]
    Missing(String),
}

/// Every call of the given contracts reachable over HTTP, by path.
///
/// Left out: the mesh's internal calls (their audience is the mesh's own nodes, never a
/// browser) and calls whose client streams (a browser's `fetch` sends one body).
///
/// ```
/// let routes = mesh_web::Routes::new(mesh_api::CONTRACTS, mesh_api::FILE_DESCRIPTOR_SET).unwrap();
/// let send = routes.get("/message/v1/Send").unwrap();
/// assert_eq!(send.method.path, "/message.v1.Message/Send");
/// assert_eq!(send.input.full_name(), "message.v1.SendRequest");
/// assert!(routes.get("/gateway/v1/Attach").unwrap().streams());
/// // internal to the mesh: not served to browsers
/// assert!(routes.get("/gateway/v1/Deliver").is_none());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Routes {
    by_path: BTreeMap<String, Route>,
}

impl Routes {
    /// The routes of `contracts`, described by `descriptors` (an encoded `FileDescriptorSet`
    /// holding every contract's file, as `mesh_api::FILE_DESCRIPTOR_SET` does).
    pub fn new(
        contracts: &[&'static ContractSpec],
        descriptors: &[u8],
    ) -> Result<Self, RoutesError> {
        let pool = DescriptorPool::decode(descriptors)?;
        let mut routes = Self::default();
        for &contract in contracts {
            routes.add(contract, &pool)?;
        }
        Ok(routes)
    }

    /// Adds the calls of `contract` (the admin API, for the ops console, is added this way
    /// beside the business contracts).
    pub fn add(
        &mut self,
        contract: &'static ContractSpec,
        pool: &DescriptorPool,
    ) -> Result<(), RoutesError> {
        let service = pool
            .get_service_by_name(contract.service)
            .ok_or_else(|| RoutesError::Missing(format!("service {}", contract.service)))?;
        for method in contract.methods {
            if method.client_streaming || method.audience.is_internal() {
                continue;
            }
            let described = service
                .methods()
                .find(|m| m.name() == method.name)
                .ok_or_else(|| RoutesError::Missing(format!("call {}", method.path)))?;
            let http_path = format!("/{}/v{}/{}", contract.name, contract.major, method.name);
            self.by_path.insert(
                http_path.clone(),
                Route {
                    http_path,
                    contract,
                    method,
                    input: described.input(),
                    output: described.output(),
                },
            );
        }
        Ok(())
    }

    /// The call served at `path`.
    pub fn get(&self, path: &str) -> Option<&Route> {
        self.by_path.get(path)
    }

    /// Every route, by path.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.by_path.values()
    }
}
