"""S3 errors: the code, HTTP status and message S3 clients expect, rendered as S3's XML."""

from __future__ import annotations

from xml.sax.saxutils import escape

#: code -> (HTTP status, default message), as Amazon S3 documents them.
CODES: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed."),
    "BadDigest": (400, "The Content-MD5 you specified did not match what we received."),
    "BucketAlreadyExists": (409, "The requested bucket name is not available."),
    "BucketAlreadyOwnedByYou": (409, "Your previous request to create the named bucket "
                                     "succeeded and you already own it."),
    "BucketNotEmpty": (409, "The bucket you tried to delete is not empty"),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed object "
                            "size."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed size"),
    "IncompleteBody": (400, "You did not provide the number of bytes specified by the "
                            "Content-Length HTTP header"),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (403, "The AWS Access Key Id you provided does not exist in our "
                                "records."),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidDigest": (400, "The Content-MD5 you specified is not valid."),
    "InvalidPart": (400, "One or more of the specified parts could not be found."),
    "InvalidPartOrder": (400, "The list of parts was not in ascending order."),
    "InvalidPartNumber": (416, "The requested partnumber is not satisfiable"),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidRequest": (400, "Invalid Request"),
    "KeyTooLongError": (400, "Your key is too long"),
    "MalformedTrailerError": (400, "The request contained trailing data that was not "
                                   "well-formed or did not conform to our published schema."),
    "MalformedXML": (400, "The XML you provided was not well-formed or did not validate "
                          "against our published schema."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchUpload": (404, "The specified upload does not exist."),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NotImplemented": (501, "A header or query you provided implies functionality that is "
                            "not implemented."),
    "PreconditionFailed": (412, "At least one of the pre-conditions you specified did not "
                                "hold"),
    "RequestTimeTooSkewed": (403, "The difference between the request time and the current "
                                  "time is too large."),
    "ServiceUnavailable": (503, "Please reduce your request rate."),
    "SlowDown": (503, "Please reduce your request rate."),
    "SignatureDoesNotMatch": (403, "The request signature we calculated does not match the "
                                   "signature you provided. Check your key and signing "
                                   "method."),
    "XAmzContentSHA256Mismatch": (400, "The provided 'x-amz-content-sha256' header does not "
                                       "match what was computed."),
}


class S3Error(Exception):
    """An error answered to the client as ``<Error><Code>...`` with the matching status."""

    def __init__(self, code: str, message: str | None = None, **extra: str) -> None:
        status, default = CODES.get(code, (400, code))
        self.code = code
        self.status = status
        self.message = message or default
        self.extra = extra
        super().__init__(f"{code}: {self.message}")

    def to_xml(self, resource: str, request_id: str) -> bytes:
        fields = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in self.extra.items())
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{escape(self.message)}</Message>"
            f"{fields}<Resource>{escape(resource)}</Resource>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()
