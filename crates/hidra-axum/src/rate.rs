//! Per-tenant request limits: a token bucket per tenant ([`governor`]), so
//! one tenant's flood is answered `429` without slowing the others.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A request rate for one tenant: `per_second` on average, up to `burst` at
/// once. See [`TenantLayer::with_rate_limit`](crate::TenantLayer::with_rate_limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TenantRate {
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl TenantRate {
    /// The metadata key of a tenant's own rate (requests per second).
    pub const PER_SECOND_KEY: &str = "requests_per_second";
    /// The metadata key of a tenant's own burst.
    pub const BURST_KEY: &str = "request_burst";

    /// `per_second` requests a second (at least 1), with a burst of as many.
    pub fn per_second(per_second: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        TenantRate {
            per_second,
            burst: per_second,
        }
    }

    /// Allows `burst` requests at once (at least 1).
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        self
    }

    /// This rate, or the tenant's own where its registry metadata sets one
    /// (`{"requests_per_second": 50, "request_burst": 100}`).
    fn for_tenant(self, tenant: &hidra::Tenant) -> Self {
        let own = |key| {
            tenant
                .metadata
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new)
        };
        match own(Self::PER_SECOND_KEY) {
            Some(per_second) => TenantRate {
                per_second,
                burst: own(Self::BURST_KEY).unwrap_or(per_second),
            },
            None => TenantRate {
                burst: own(Self::BURST_KEY).unwrap_or(self.burst),
                ..self
            },
        }
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// A tenant's bucket, with the rate it was built for.
struct Bucket {
    rate: TenantRate,
    limiter: DefaultDirectRateLimiter,
}

/// The buckets of every tenant seen lately (bounded; an idle tenant's bucket
/// is full again anyway, so forgetting it loses nothing).
#[derive(Clone)]
pub(crate) struct RateLimits {
    default: TenantRate,
    buckets: moka::sync::Cache<hidra::TenantId, Arc<Bucket>>,
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimits")
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    pub(crate) fn new(default: TenantRate) -> Self {
        RateLimits {
            default,
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    /// Takes one request from `tenant`'s bucket; when it is empty, how long
    /// until the next request would be let through.
    pub(crate) fn check(&self, tenant: &hidra::Tenant) -> Result<(), Duration> {
        let rate = self.default.for_tenant(tenant);
        let bucket = match self.buckets.get(&tenant.id) {
            Some(bucket) if bucket.rate == rate => bucket,
            // New, or its rate changed in the registry.
            _ => {
                let bucket = Arc::new(Bucket {
                    rate,
                    limiter: RateLimiter::direct(rate.quota()),
                });
                self.buckets.insert(tenant.id.clone(), Arc::clone(&bucket));
                bucket
            }
        };
        bucket
            .limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_overrides_the_default_rate() {
        let mut tenant = hidra::testing::tenant_record("acme");
        let default = TenantRate::per_second(10).with_burst(20);
        assert_eq!(default.for_tenant(&tenant), default);
        tenant.metadata = serde_json::json!({ "requests_per_second": 50 });
        assert_eq!(default.for_tenant(&tenant), TenantRate::per_second(50));
        tenant.metadata = serde_json::json!({ "request_burst": 3 });
        assert_eq!(
            default.for_tenant(&tenant),
            TenantRate::per_second(10).with_burst(3)
        );
        // Nonsense is ignored, never a panic or a zero rate.
        tenant.metadata = serde_json::json!({ "requests_per_second": -1, "request_burst": "x" });
        assert_eq!(default.for_tenant(&tenant), default);
    }
}
