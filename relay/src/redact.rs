/// A URL fit for a log line: the password, if any, replaced by `***`.
///
/// Works on any `scheme://user:password@host/...` form without parsing the rest,
/// so a URL that some parser would reject is still redacted.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
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
    use super::redact_url;

    #[test]
    fn hides_passwords_and_keeps_the_rest() {
        assert_eq!(
            redact_url("postgres://app:s3cr3t@db:5432/shop?sslmode=require"),
            "postgres://app:***@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            redact_url("amqps://guest:p@ss@mq/%2f"),
            "amqps://guest:***@mq/%2f"
        );
        assert_eq!(redact_url("amqp://mq:5672/%2f"), "amqp://mq:5672/%2f");
        assert_eq!(redact_url("amqp://user@mq"), "amqp://user@mq");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
