//! Connection URLs in messages: never with their password.

/// `url` with its password replaced by `***`, for messages and logs: the
/// password of the user part (`postgres://user:***@host/db`) and a
/// `password` query parameter (`?password=***`). Text that is not a URL
/// comes back as it is.
///
/// ```
/// assert_eq!(
///     hidra::redact_url("postgres://app:s3cret@db:5432/app"),
///     "postgres://app:***@db:5432/app"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &authority[..colon],
                &url[scheme_end + at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    // A password may also come as a query parameter.
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url as redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://user:secret@db:5432/app?x=1"),
            "postgres://user:***@db:5432/app?x=1"
        );
        assert_eq!(
            redact("postgres://user:p@ss@db/app"),
            "postgres://user:***@db/app"
        );
        assert_eq!(redact("postgres://user@db/app"), "postgres://user@db/app");
        assert_eq!(redact("postgres://db/app"), "postgres://db/app");
        assert_eq!(
            redact("postgres://db/app?user=u&password=s3cret"),
            "postgres://db/app?user=u&password=***"
        );
        assert_eq!(redact("not a url"), "not a url");
    }
}
