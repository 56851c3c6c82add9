//! Server URLs fit for a log line: every part of the toolkit that prints a URL
//! (the relay's messages, `/readyz`, the consumer's logs) redacts it here first.

/// A URL with the password, if any, replaced by `***`: the one in its user info, and
/// the value of any `password=` parameter (a query's, or a libpq `key=value` string's).
///
/// Works on any `scheme://user:password@host/...` form without parsing the rest, so
/// a URL that some parser would reject is still redacted: one that lacks its scheme
/// (`user:password@host`), or whose password holds an unescaped `/`, `?`, `#` or `@`
/// (the user info runs to the last `@`). What has no password comes back as it was.
/// In doubt it hides more, never less: this is for log lines, not for connecting.
///
/// ```
/// use txoutbox::url::redact;
///
/// assert_eq!(redact("amqp://app:s3cr3t@mq:5672/%2f"), "amqp://app:***@mq:5672/%2f");
/// ```
pub fn redact(url: &str) -> String {
    redact_parameters(&redact_user_info(url))
}

fn redact_user_info(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let Some((user, _password)) = userinfo.split_once(':') else {
        return url.to_owned();
    };
    format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
}

/// Every `password=...` value, up to the next `&` or space, as `***`.
fn redact_parameters(url: &str) -> String {
    const KEY: &str = "password=";
    let mut shown = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(found) = rest.to_ascii_lowercase().find(KEY) {
        let value_start = found + KEY.len();
        let starts_a_key = found == 0 || matches!(rest.as_bytes()[found - 1], b'?' | b'&' | b' ');
        shown.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if starts_a_key {
            let value_end = rest.find(['&', ' ']).unwrap_or(rest.len());
            shown.push_str("***");
            rest = &rest[value_end..];
        }
    }
    shown.push_str(rest);
    shown
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn hides_passwords_and_keeps_the_rest() {
        assert_eq!(
            redact("postgres://app:s3cr3t@db:5432/shop?sslmode=require"),
            "postgres://app:***@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            redact("amqps://guest:p@ss@mq/%2f"),
            "amqps://guest:***@mq/%2f"
        );
        assert_eq!(redact("amqp://mq:5672/%2f"), "amqp://mq:5672/%2f");
        assert_eq!(redact("amqp://user@mq"), "amqp://user@mq");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn hides_a_password_no_parser_would_read() {
        // Unescaped `/` and `@` in the password: sqlx rejects the URL, and its error
        // message prints it.
        assert_eq!(
            redact("postgres://app:pa/ss@db/shop"),
            "postgres://app:***@db/shop"
        );
        assert_eq!(
            redact("postgres://app:a@b/c?d@db/x"),
            "postgres://app:***@db/x"
        );
    }

    #[test]
    fn hides_password_parameters() {
        assert_eq!(
            redact("postgres://db/shop?user=app&password=s3cr3t&sslmode=require"),
            "postgres://db/shop?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            redact("host=db user=app PASSWORD=s3cr3t dbname=shop"),
            "host=db user=app PASSWORD=*** dbname=shop"
        );
        assert_eq!(redact("password=x"), "password=***");
        // Only a key named `password` is one: `my_password=` inside a value is not.
        assert_eq!(
            redact("postgres://db/x?note=my_password=kept"),
            "postgres://db/x?note=my_password=kept"
        );
    }

    #[test]
    fn hides_the_password_of_a_url_without_its_scheme() {
        assert_eq!(redact("guest:hunter2@mq:5672/%2f"), "guest:***@mq:5672/%2f");
        assert_eq!(redact("mq:5672"), "mq:5672");
    }
}
