//! Server URLs fit for a log line: every part of the toolkit that prints a URL
//! (the relay's messages, `/readyz`, the consumer's logs) redacts it here first.

/// A URL with the password, if any, replaced by `***`.
///
/// Works on any `scheme://user:password@host/...` form without parsing the rest, so
/// a URL that some parser would reject is still redacted; so is one that lacks its
/// scheme (`user:password@host`). What has no password comes back as it was.
///
/// ```
/// use txoutbox::url::redact;
///
/// assert_eq!(redact("amqp://app:s3cr3t@mq:5672/%2f"), "amqp://app:***@mq:5672/%2f");
/// ```
pub fn redact(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if !userinfo.contains(':') {
        return url.to_owned();
    }
    format!(
        "{}{user}:***{}",
        &url[..scheme_end],
        &url[scheme_end + at..]
    )
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
    fn hides_the_password_of_a_url_without_its_scheme() {
        assert_eq!(redact("guest:hunter2@mq:5672/%2f"), "guest:***@mq:5672/%2f");
        assert_eq!(redact("mq:5672"), "mq:5672");
    }
}
