//! Roles, what each route needs, and who is asking.
//!
//! docs/security.md holds the matrix in prose; [`Role::can`] is the matrix.

use hoistway_model::LiftId;
use serde::{Deserialize, Serialize};

/// A staff member's role. Each includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads lifts, buildings, state, readings, rollups, dead letters; runs SQL.
    Viewer,
    /// And: approves and revokes devices, manages lifts, replays dead letters.
    Operator,
    /// And: users and roles, signing keys, storage upkeep.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Whether this role must log in with a second factor.
    pub fn needs_second_factor(self) -> bool {
        self >= Role::Operator
    }

    /// Whether this role may use a route that needs `access`.
    pub fn can(self, access: Access) -> bool {
        match access {
            Access::Public | Access::Staff => true,
            Access::Device => false,
            Access::Role(needed) | Access::Fleet(needed) => self >= needed,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not a role (viewer, operator, admin)"))
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, the OAuth endpoints, login).
    Public,
    /// A lift's access token (ingest).
    Device,
    /// Any signed-in staff member, even one who still has to enrol a second factor (their own
    /// account, sessions and tokens).
    Staff,
    /// A staff member with at least this role, second factor done where the role needs one.
    /// A customer's user passes too; the handler shows them only that customer's data.
    Role(Role),
    /// As `Role`, for the lift maker's staff only (whole-fleet scope): device enrolment,
    /// signing keys, storage upkeep, fleet-wide metrics.
    Fleet(Role),
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A lift with a valid access token.
    Device { lift_id: LiftId },
    /// A staff member by session or API token.
    User {
        username: String,
        role: Role,
        /// `Some(c)`: one of customer `c`'s people, who see only its lifts.
        customer: Option<String>,
        /// Id of the token used (to revoke "this session" on logout).
        token_id: String,
        /// False while an operator or admin has yet to pass a second factor.
        second_factor: bool,
    },
}

impl Principal {
    /// Checks `access`; the error says what is missing.
    pub fn allows(&self, access: Access) -> crate::Result<()> {
        use crate::Error;
        match (self, access) {
            (_, Access::Public) => Ok(()),
            (Principal::Device { .. }, Access::Device) => Ok(()),
            (Principal::Device { .. }, _) => Err(Error::Forbidden(
                "a device token only posts telemetry; staff endpoints need a staff session or API token"
                    .into(),
            )),
            (Principal::User { .. }, Access::Device) => Err(Error::Forbidden(
                "telemetry is posted with a lift's device token, not a staff token".into(),
            )),
            (Principal::User { .. }, Access::Staff) => Ok(()),
            (
                Principal::User {
                    role,
                    second_factor,
                    customer,
                    ..
                },
                Access::Role(needed) | Access::Fleet(needed),
            ) => {
                if let (Some(customer), Access::Fleet(_)) = (customer, access) {
                    return Err(Error::Forbidden(format!(
                        "this is for the lift maker's staff; your account belongs to customer {customer:?}"
                    )));
                }
                if role.needs_second_factor() && !second_factor {
                    return Err(Error::Forbidden(format!(
                        "the {role} role needs a second factor: enrol TOTP (POST /v1/auth/totp) and log in again"
                    )));
                }
                if role.can(access) {
                    Ok(())
                } else {
                    Err(Error::Forbidden(format!(
                        "this needs the {needed} role; you are {role}"
                    )))
                }
            }
        }
    }

    pub fn username(&self) -> Option<&str> {
        match self {
            Principal::User { username, .. } => Some(username),
            Principal::Device { .. } => None,
        }
    }

    /// The customer a user belongs to; `None` for the lift maker's staff (and devices).
    pub fn customer(&self) -> Option<&str> {
        match self {
            Principal::User { customer, .. } => customer.as_deref(),
            Principal::Device { .. } => None,
        }
    }

    /// Whether this principal holds at least `role` (ignoring scope).
    pub fn has_role(&self, needed: Role) -> bool {
        matches!(self, Principal::User { role, .. } if *role >= needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below_and_devices_only_post() {
        let user = |role, second_factor| Principal::User {
            username: "u".into(),
            role,
            customer: None,
            token_id: "t".into(),
            second_factor,
        };
        for role in Role::ALL {
            for needed in Role::ALL {
                assert_eq!(
                    user(role, true).allows(Access::Role(needed)).is_ok(),
                    role >= needed
                );
            }
            assert!(user(role, true).allows(Access::Device).is_err());
            assert!(user(role, false).allows(Access::Staff).is_ok());
        }
        assert!(
            user(Role::Viewer, false)
                .allows(Access::Role(Role::Viewer))
                .is_ok()
        );
        assert!(
            user(Role::Operator, false)
                .allows(Access::Role(Role::Viewer))
                .is_err()
        );
        let device = Principal::Device {
            lift_id: LiftId::new("L-1").unwrap(),
        };
        assert!(device.allows(Access::Device).is_ok());
        assert!(device.allows(Access::Staff).is_err());
        assert!(device.allows(Access::Role(Role::Viewer)).is_err());
    }
}
