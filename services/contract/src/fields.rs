//! What every service does with request fields, so refusals and timestamps read the same in
//! all of them.

/// Refuses an empty required field with `INVALID_ARGUMENT` naming it.
pub fn required(field: &'static str, value: &str) -> Result<(), tonic::Status> {
    if value.is_empty() {
        Err(tonic::Status::invalid_argument(format!(
            "{field} is required"
        )))
    } else {
        Ok(())
    }
}

/// Now, as every `*_at_ms` field carries it: milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_required_field_is_named() {
        assert!(super::required("user_id", "bob").is_ok());
        let status = super::required("user_id", "").unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::InvalidArgument, "user_id is required")
        );
    }
}
