//! What a caught panic says: the toolkit runs users' handlers and hooks under
//! `catch_unwind`, and reports their panics as errors with this text.

use std::any::Any;

/// The message a panic carries, as `panic!` leaves it: a `&str` or a `String`.
pub fn message(payload: &(dyn Any + Send)) -> &str {
    match payload.downcast_ref::<&str>() {
        Some(message) => message,
        None => payload
            .downcast_ref::<String>()
            .map_or("a non-string panic payload", String::as_str),
    }
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn reads_both_kinds_of_panic_message() {
        let literal = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        let formatted = std::panic::catch_unwind(|| panic!("{}", 7)).unwrap_err();
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7)).unwrap_err();
        assert_eq!(message(&*literal), "plain");
        assert_eq!(message(&*formatted), "7");
        assert_eq!(message(&*other), "a non-string panic payload");
    }
}
