// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// TOLLGATE: the case-sensitive name together with the `HeaderName` when the caller already
    /// holds one, so that inserting a header need not parse its name again (a parse of a
    /// custom name also allocates). The default parses nothing and returns `None`.
    fn into_names(self) -> (CaseHeaderName, Option<HeaderName>)
    where
        Self: Sized,
    {
        (self.into_case_header_name(), None)
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }

    fn into_names(self) -> (CaseHeaderName, Option<HeaderName>) {
        (CaseHeaderName(titled_header_name(&self)), Some(self))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }

    fn into_names(self) -> (CaseHeaderName, Option<HeaderName>) {
        (CaseHeaderName(titled_header_name(self)), Some(self.clone()))
    }
}

/// TOLLGATE: a header name together with its spelling on the wire, made once (a constant, or
/// when configuration is loaded) and inserted many times. Inserting a `HeaderName` that
/// `titled_header_name_str` does not list copies the name into a new `Bytes` on every insert:
/// an allocation and a free per header (`X-Forwarded-For`, `X-Request-ID`, ...). Inserting a
/// `&SpelledName` clones two `Bytes` instead, which for a static name copies two pointers.
#[derive(Debug, Clone)]
pub struct SpelledName {
    name: HeaderName,
    case: CaseHeaderName,
}

impl SpelledName {
    /// A name written as it goes on the wire; `HeaderName::from_static` rules apply (lower
    /// case, valid token), and break the build of a constant that breaks them.
    pub const fn from_static(name: &'static str) -> Self {
        SpelledName {
            name: HeaderName::from_static(name),
            case: CaseHeaderName(Bytes::from_static(name.as_bytes())),
        }
    }

    /// TOLLGATE: a name spelled as written, its case kept on the wire (HTTP/1), parsed once;
    /// for names known only when configuration is loaded.
    pub fn from_spelling(spelling: &'static str) -> Result<Self, http::header::InvalidHeaderName> {
        Ok(SpelledName {
            name: HeaderName::from_bytes(spelling.as_bytes())?,
            case: CaseHeaderName(Bytes::from_static(spelling.as_bytes())),
        })
    }

    /// `name` spelled as inserting it would spell it.
    pub fn new(name: HeaderName) -> Self {
        let case = CaseHeaderName(titled_header_name(&name));
        SpelledName { name, case }
    }

    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl IntoCaseHeaderName for &SpelledName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self.case.clone()
    }

    fn into_names(self) -> (CaseHeaderName, Option<HeaderName>) {
        (self.case.clone(), Some(self.name.clone()))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
        const ID: SpelledName = SpelledName::from_static("x-request-id");
        assert_eq!((&ID).into_case_header_name().as_slice(), b"x-request-id");
        assert_eq!(ID.name(), "x-request-id");
        let server = SpelledName::new(header::SERVER);
        assert_eq!((&server).into_names().0.as_slice(), b"Server");
        let spelled = SpelledName::from_spelling("X-Correlation-ID").unwrap();
        assert_eq!((&spelled).into_names().0.as_slice(), b"X-Correlation-ID");
        assert_eq!(spelled.name(), "x-correlation-id");
        assert!(SpelledName::from_spelling("bad name").is_err());
        let custom = SpelledName::new(HeaderName::from_static("x-a"));
        assert_eq!((&custom).into_names().0.as_slice(), b"x-a");
    }
}
