//! The lift identifier: 1–64 characters of `[A-Za-z0-9._-]`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest lift id the contract allows.
pub const LIFT_ID_MAX_LEN: usize = 64;

/// A validated lift id. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LiftId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiftIdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {LIFT_ID_MAX_LEN} characters, got {0}")]
    TooLong(usize),
    #[error("may only contain A-Z, a-z, 0-9, '.', '_' and '-', found {0:?}")]
    BadChar(char),
}

impl LiftId {
    pub fn new(raw: &str) -> Result<Self, LiftIdError> {
        Self::check(raw)?;
        Ok(Self(Arc::from(raw)))
    }

    /// Checks `raw` against the contract without allocating.
    pub fn check(raw: &str) -> Result<(), LiftIdError> {
        if raw.is_empty() {
            return Err(LiftIdError::Empty);
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(LiftIdError::BadChar(bad));
        }
        if raw.len() > LIFT_ID_MAX_LEN {
            return Err(LiftIdError::TooLong(raw.len()));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LiftId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LiftId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LiftId({})", &self.0)
    }
}

impl std::str::FromStr for LiftId {
    type Err = LiftIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl std::borrow::Borrow<str> for LiftId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for LiftId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LiftId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        LiftId::new(&raw).map_err(serde::de::Error::custom)
    }
}

/// In the API document a lift id is a string of the contract's characters.
impl utoipa::PartialSchema for LiftId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Za-z0-9._-]{1,64}$"))
            .examples([serde_json::json!("L-000042")])
            .into()
    }
}

impl utoipa::ToSchema for LiftId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        assert!(LiftId::new("L-000123_a.b").is_ok());
        assert!(LiftId::new(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_what_the_contract_forbids() {
        assert_eq!(LiftId::new(""), Err(LiftIdError::Empty));
        assert_eq!(LiftId::new(&"x".repeat(65)), Err(LiftIdError::TooLong(65)));
        assert_eq!(LiftId::new("a b"), Err(LiftIdError::BadChar(' ')));
        assert_eq!(LiftId::new("a/b"), Err(LiftIdError::BadChar('/')));
        assert_eq!(LiftId::new("é"), Err(LiftIdError::BadChar('é')));
    }
}
