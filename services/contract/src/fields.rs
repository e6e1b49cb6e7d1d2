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

/// The longest id a request may carry, in bytes (conversation, user, terminal, client message
/// ids): everything accepted must be storable and indexable, by any backend.
pub const MAX_ID_BYTES: usize = 128;

/// The characters an id may use besides ASCII letters and digits.
pub const ID_PUNCTUATION: &str = "-_.:@";

/// Refuses an id that is empty, longer than [`MAX_ID_BYTES`], or uses a character other than
/// ASCII letters, digits and [`ID_PUNCTUATION`] (no spaces, no look-alike Unicode), with
/// `INVALID_ARGUMENT` naming the field and the limit.
pub fn id(field: &'static str, value: &str) -> Result<(), tonic::Status> {
    required(field, value)?;
    if value.len() > MAX_ID_BYTES {
        return Err(tonic::Status::invalid_argument(format!(
            "{field} is {} bytes, over the limit of {MAX_ID_BYTES} bytes",
            value.len()
        )));
    }
    if let Some((at, c)) = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(*c)))
    {
        return Err(tonic::Status::invalid_argument(format!(
            "{field} has {c:?} at byte {at}: ids use ASCII letters, digits and {ID_PUNCTUATION:?} only"
        )));
    }
    Ok(())
}

/// Like [`id`], for an optional id: empty is fine.
pub fn optional_id(field: &'static str, value: &str) -> Result<(), tonic::Status> {
    if value.is_empty() {
        Ok(())
    } else {
        id(field, value)
    }
}

/// The sender of the platform's own messages (from order events and the like). No user may
/// be it, in any spelling of its case.
pub const SYSTEM_SENDER: &str = "system";

/// The prefix of a third-party channel's users (`ch:<channel>:<platform user>`): the mesh
/// names them itself, from the platform's ids, so no end user sends as one.
pub const CHANNEL_USER_PREFIX: &str = "ch:";

/// Whether `user` is a third-party channel's user ([`CHANNEL_USER_PREFIX`]).
pub fn is_channel_user(user: &str) -> bool {
    user.starts_with(CHANNEL_USER_PREFIX)
}

/// Whether `user` is, or reads as, the platform's own sender: [`SYSTEM_SENDER`] in any case,
/// with any punctuation around or inside it (`system.`, `_System`, `sys-tem`), or before an
/// `@` or `:` (`system@mall`). Ids are ASCII ([`id`]), so no other spelling can look like it.
pub fn is_reserved_sender(user: &str) -> bool {
    let letters = |text: &str| -> String {
        text.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let local = user.split(['@', ':']).next().unwrap_or_default();
    letters(user) == SYSTEM_SENDER || letters(local) == SYSTEM_SENDER
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

    #[test]
    fn ids_have_a_length_and_character_limit_named_in_the_refusal() {
        for ok in ["bob", "order:42:created", "a.b-c_d@e", &"x".repeat(128)] {
            assert!(super::id("user_id", ok).is_ok(), "{ok}");
        }
        let long = super::id("conversation_id", &"x".repeat(3000)).unwrap_err();
        assert_eq!(long.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            long.message(),
            "conversation_id is 3000 bytes, over the limit of 128 bytes"
        );
        for bad in ["sys\u{200b}tem", "system ", "a/b", "a\u{0}"] {
            let err = super::id("from_user", bad).unwrap_err();
            assert!(
                err.message().starts_with("from_user has "),
                "{}",
                err.message()
            );
        }
        assert!(super::optional_id("client_msg_id", "").is_ok());
        assert!(super::optional_id("client_msg_id", "a b").is_err());
    }
}
