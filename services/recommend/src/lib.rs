//! The recommend service: product suggestions shown in the chat. How many it shows is a
//! per-tenant setting (`services.recommend.settings.max_suggestions`), never a tenant check in
//! code.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use mesh_api::recommend::v1;
use mesh_contract::{RequestContext, TenantId};
use tonic::{Request, Response, Status};

/// Suggestions when a tenant sets no `max_suggestions`.
pub const DEFAULT_MAX_SUGGESTIONS: u32 = 3;

/// The service.
#[derive(Clone, Debug, Default)]
pub struct RecommendService {
    max_by_tenant: Arc<RwLock<HashMap<TenantId, u32>>>,
    catalogue: Arc<Vec<v1::Product>>,
}

impl RecommendService {
    /// The service with each tenant's `max_suggestions` and a product catalogue.
    pub fn new(max_by_tenant: HashMap<TenantId, u32>, catalogue: Vec<v1::Product>) -> Self {
        Self {
            max_by_tenant: Arc::new(RwLock::new(max_by_tenant)),
            catalogue: Arc::new(catalogue),
        }
    }

    /// Sets a tenant's `max_suggestions` (a tenant onboarded while the service runs).
    pub fn set_max_suggestions(&self, tenant: TenantId, max: u32) {
        self.max_by_tenant
            .write()
            .expect("lock")
            .insert(tenant, max);
    }

    /// A small fixed catalogue, for the demo and tests.
    pub fn sample_catalogue() -> Vec<v1::Product> {
        (1..=10)
            .map(|i| v1::Product {
                sku: format!("sku-{i:02}"),
                title: format!("Product {i}"),
                price_cents: 990 * i,
                currency: "CNY".into(),
            })
            .collect()
    }
}

#[tonic::async_trait]
impl v1::recommend_server::Recommend for RecommendService {
    async fn suggest(
        &self,
        request: Request<v1::SuggestRequest>,
    ) -> Result<Response<v1::SuggestResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        // for an end user, its own suggestions (not another user's history)
        ctx.act_as("user_id", &request.get_ref().user_id)?;
        // both optional (anonymous suggestions, no conversation), checked when given
        mesh_contract::fields::optional_id("user_id", &request.get_ref().user_id)?;
        mesh_contract::fields::optional_id("conversation_id", &request.get_ref().conversation_id)?;
        let tenant_max = self
            .max_by_tenant
            .read()
            .expect("lock")
            .get(&ctx.tenant)
            .copied()
            .unwrap_or(DEFAULT_MAX_SUGGESTIONS);
        let asked = request.get_ref().limit;
        let count = if asked == 0 {
            tenant_max
        } else {
            asked.min(tenant_max)
        };
        let products = self
            .catalogue
            .iter()
            .take(count as usize)
            .cloned()
            .collect();
        Ok(Response::new(v1::SuggestResponse { products }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::recommend_server::Recommend as _;

    #[tokio::test]
    async fn the_number_of_suggestions_is_the_tenants_setting() {
        let service = RecommendService::new(
            HashMap::from([(TenantId::new("mall").unwrap(), 5)]),
            RecommendService::sample_catalogue(),
        );
        let ask = |tenant: &str, limit: u32| {
            let mut request = Request::new(v1::SuggestRequest {
                limit,
                ..Default::default()
            });
            request
                .extensions_mut()
                .insert(RequestContext::new(TenantId::new(tenant).unwrap()));
            request
        };
        assert_eq!(
            service
                .suggest(ask("mall", 0))
                .await
                .unwrap()
                .into_inner()
                .products
                .len(),
            5
        );
        assert_eq!(
            service
                .suggest(ask("mall", 2))
                .await
                .unwrap()
                .into_inner()
                .products
                .len(),
            2
        );
        assert_eq!(
            service
                .suggest(ask("paipai", 0))
                .await
                .unwrap()
                .into_inner()
                .products
                .len(),
            3
        );
    }
}
