//! Tenants: the one place a tenant is created (API, CLI, the sandbox's first
//! run, tests and the benchmark all come here), so the checks on its slug
//! and name cannot drift apart.

use crate::clock::Clock;
use crate::db::{self, tenants, tenants::Tenant};
use crate::domain::{text_field, InvalidInput};
use sqlx::PgPool;
use std::sync::Arc;

pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("a tenant with this slug already exists")]
    Exists,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub struct Tenants {
    db: PgPool,
    clock: Arc<dyn Clock>,
}

impl Tenants {
    pub fn new(db: PgPool, clock: Arc<dyn Clock>) -> Self {
        Tenants { db, clock }
    }

    /// Creates a tenant; the name defaults to the slug.
    pub async fn create(
        &self,
        slug: &str,
        name: Option<&str>,
    ) -> Result<Tenant, CreateTenantError> {
        if !tenants::is_valid_slug(slug) {
            return Err(InvalidInput::new("slug", "must match ^[a-z0-9][a-z0-9-]{1,62}$").into());
        }
        let name = match name {
            None | Some("") => slug,
            Some(name) => text_field("name", name, MAX_NAME_CHARS)?,
        };
        match tenants::insert_tenant(&self.db, slug, name, self.clock.now()).await {
            Ok(tenant) => {
                tracing::info!(tenant = %tenant.slug, "tenant created");
                Ok(tenant)
            }
            Err(e) if db::is_unique_violation(&e) => Err(CreateTenantError::Exists),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self) -> Result<Vec<Tenant>, sqlx::Error> {
        tenants::list_tenants(&self.db).await
    }

    /// No tenant has a slug that is not one (and PostgreSQL is not asked
    /// about text it would refuse, such as NUL).
    pub async fn find_by_slug(&self, slug: &str) -> Result<Option<Tenant>, sqlx::Error> {
        if !tenants::is_valid_slug(slug) {
            return Ok(None);
        }
        tenants::find_tenant_by_slug(&self.db, slug).await
    }
}
