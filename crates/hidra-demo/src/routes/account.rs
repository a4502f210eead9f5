//! Sign-up, login and `/me`.

use axum::extract::State;
use axum::http::StatusCode;
use std::sync::{Arc, Mutex};

use hidra::auth::{Accounts, AuthError, NewUser, PreparedUser, User};
use hidra::sqlx::PgConnection;
use hidra::{NewTenant, Seed, TenantId};
use hidra_axum::{Auth, RequestConn};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::ToSchema;

use super::users::{UserView, find_user};
use crate::error::{ApiError, Checks, ErrorBody};
use crate::extract::{ClientKey, Json, looks_like_email};
use crate::state::AppState;

/// A company signing up: its tenant and its first admin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    /// The tenant id: lowercase letters, digits, `-` and `_`, starting with
    /// a letter, at most 50 characters (`acme-corp`; its schema is
    /// `tenant_acme_corp`).
    #[serde(default)]
    #[schema(
        pattern = "^[a-z][a-z0-9_-]{0,49}$",
        min_length = 1,
        max_length = 50,
        required = true
    )]
    pub tenant: String,
    /// The company's display name, 1 to 200 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, required = true)]
    pub company: String,
    /// The admin's login email, unique across all tenants.
    #[serde(default)]
    #[schema(format = Email, required = true)]
    pub email: String,
    /// The admin's name, 1 to 200 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, required = true)]
    pub full_name: String,
    /// 8 to 1024 bytes.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 1024, format = Password, required = true)]
    pub password: String,
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// Its id.
    #[schema(value_type = String)]
    pub id: TenantId,
    /// Its display name.
    pub name: String,
    /// `active` once provisioned.
    pub status: String,
}

/// A new tenant, its admin and the admin's token.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUp {
    /// The tenant created.
    pub tenant: TenantView,
    /// Its first admin.
    pub user: UserView,
    /// A bearer token for the admin.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// Credentials.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The login email.
    pub email: String,
    /// The password.
    pub password: String,
}

/// A token for a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// A bearer token: `Authorization: Bearer <token>`.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The user's tenant.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// The user.
    pub user: UserView,
}

/// Maps the account errors that concern the request body to field errors.
pub(crate) fn account_error(error: hidra::Error) -> ApiError {
    match &error {
        hidra::Error::Auth(AuthError::EmailTaken) => {
            ApiError::Conflict("this email is already registered; sign in instead".into())
        }
        hidra::Error::Auth(AuthError::InvalidEmail) => {
            ApiError::field("email", "must be an email address")
        }
        hidra::Error::Auth(e @ AuthError::InvalidPassword { .. }) => {
            ApiError::field("password", e.to_string())
        }
        hidra::Error::Auth(AuthError::UnknownRole(role)) => {
            ApiError::field("roles", format!("no role named {role:?}"))
        }
        _ => error.into(),
    }
}

/// Signs a company up: provisions its tenant (schema, migrations, roles) and
/// registers its first admin, or leaves nothing behind.
#[utoipa::path(post, path = "/signup", tag = "account", request_body = SignUp,
    responses((status = 201, body = SignedUp),
        (status = 409, body = ErrorBody, description = "tenant id or email taken"),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "too many sign-ups from this client")))]
pub async fn signup(
    State(state): State<AppState>,
    client: ClientKey,
    Json(body): Json<SignUp>,
) -> Result<(StatusCode, Json<SignedUp>), ApiError> {
    let mut checks = Checks::default();
    let id = TenantId::new(&body.tenant);
    if let Err(hidra::Error::InvalidTenantId { reason, .. }) = &id {
        checks.check(false, "tenant", reason);
    }
    let password = state.accounts.passwords().check_policy(&body.password);
    checks
        .text("company", &body.company, 200)
        .check(
            looks_like_email(&body.email),
            "email",
            "must be an email address",
        )
        .text("full_name", &body.full_name, 200)
        .check(
            password.is_ok(),
            "password",
            &password
                .err()
                .map_or_else(String::new, |e| e.to_string().replace("the password ", "")),
        )
        .finish()?;
    let id = id?;
    state.accounts.check_sign_up(&client.0).await?;
    // The request span has a `tenant` field; a sign-up fills it itself.
    tracing::Span::current().record("tenant", tracing::field::display(&id));

    // Provisioning and registration run to the end even if the client goes
    // away, so that a disconnect cannot leave a tenant without its admin.
    let work = async move { create_tenant(&state, id, body).await };
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
}

async fn create_tenant(
    state: &AppState,
    id: TenantId,
    body: SignUp,
) -> Result<(StatusCode, Json<SignedUp>), ApiError> {
    if state.accounts.tenant_of(&body.email).await?.is_some() {
        return Err(account_error(AuthError::EmailTaken.into()));
    }
    // The admin is registered inside the provisioning transaction: the
    // tenant and its first user exist together or not at all, even if this
    // process is killed halfway.
    let admin = NewUser::new(&body.email, body.full_name.trim(), &body.password).role("admin");
    let admin = state.accounts.prepare(admin).await.map_err(account_error)?;
    let first = FirstAdmin {
        accounts: state.accounts.clone(),
        user: admin,
        registered: Arc::default(),
    };
    let registered = Arc::clone(&first.registered);
    let new = NewTenant::new(id.clone())
        .name(body.company.trim())
        .setup(first);
    let tenant = match state.hidra.provision(new).await {
        Ok(tenant) => tenant,
        Err(hidra::Error::AlreadyExists(_) | hidra::Error::SchemaTaken { .. }) => {
            return Err(ApiError::Conflict(format!(
                "the tenant id `{id}` is taken; choose another"
            )));
        }
        Err(hidra::Error::Seed { source, .. }) => {
            return Err(match source.downcast::<hidra::Error>() {
                Ok(e) => account_error(*e),
                Err(other) => ApiError::Internal(anyhow::anyhow!(other)),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let user = registered
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the first admin was not registered")))?;
    tracing::info!(tenant = %tenant.id, "tenant signed up");
    let jwt = state.accounts.jwt();
    let token = state
        .accounts
        .issue_token(&tenant, &user)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the first admin has no login row")))?
        .into_token();
    let view = TenantView {
        id: tenant.id.clone(),
        name: tenant.name.clone(),
        status: tenant.status.to_string(),
    };
    Ok((
        StatusCode::CREATED,
        Json(SignedUp {
            tenant: view,
            user: UserView::registered(user),
            token,
            token_type: "Bearer",
            expires_in: jwt.ttl().as_secs(),
        }),
    ))
}

/// The sign-up's first admin, registered in the provisioning transaction.
struct FirstAdmin {
    accounts: Accounts,
    user: PreparedUser,
    registered: Arc<Mutex<Option<User>>>,
}

impl Seed for FirstAdmin {
    async fn seed(
        &self,
        conn: &mut PgConnection,
        tenant: &hidra::Tenant,
    ) -> Result<(), hidra::BoxError> {
        let user = self.accounts.register_in(conn, tenant, &self.user).await?;
        *self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(user);
        Ok(())
    }
}

/// Logs a user in: the tenant is found from the email.
#[utoipa::path(post, path = "/login", tag = "account", request_body = Credentials,
    responses((status = 200, body = Session),
        (status = 401, body = ErrorBody, description = "the same for an unknown email and a wrong password"),
        (status = 429, body = ErrorBody, description = "too many failed logins for this account or from this client (the same for an unknown email)")))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientKey,
    Json(body): Json<Credentials>,
) -> Result<Json<Session>, ApiError> {
    let login = state
        .accounts
        .login_from(&client.0, &body.email, &body.password)
        .await?;
    let user: User = login.user().clone();
    Ok(Json(Session {
        expires_in: state.accounts.jwt().ttl().as_secs(),
        tenant: user.tenant.clone(),
        token: login.into_token(),
        token_type: "Bearer",
        user: UserView::registered(user),
    }))
}

/// The signed-in user and its tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The user.
    #[serde(flatten)]
    pub user: UserView,
    /// Its tenant.
    #[schema(value_type = String)]
    pub tenant: TenantId,
}

/// The signed-in user.
#[utoipa::path(get, path = "/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(auth: Auth, mut conn: RequestConn) -> Result<Json<Me>, ApiError> {
    let id: i64 = auth
        .subject()
        .parse()
        .map_err(|_| ApiError::NotFound("user"))?;
    let user = find_user(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(Me {
        user,
        tenant: auth.tenant().clone(),
    }))
}

/// Ends every session of the signed-in user, on every device: each token
/// issued to it so far is refused from now on (in every process within
/// about a second). Sign in again for a new token.
#[utoipa::path(post, path = "/logout-everywhere", tag = "account", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout_everywhere(
    State(state): State<AppState>,
    auth: Auth,
    hidra_axum::CurrentTenant(tenant): hidra_axum::CurrentTenant,
) -> Result<StatusCode, ApiError> {
    let Some(Ok(id)) = auth.claims().map(|c| c.sub.parse::<i64>()) else {
        return Err(ApiError::field(
            "token",
            "only a user's token can be logged out",
        ));
    };
    state.accounts.log_out_everywhere(&tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
