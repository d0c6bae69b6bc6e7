//! IANA registry values used on the wire (RFC 7296 §3 and the IKEv2 IANA registries).
//!
//! Every registry is a newtype over the wire integer with associated constants, so that values we
//! do not know survive a parse→emit round trip (smoltcp's `enum_with_unknown!` idea, without the
//! macro crate).

use core::fmt;

macro_rules! registry {
    (
        $(#[$m:meta])*
        pub struct $name:ident($ty:ty) {
            $( $(#[$cm:meta])* $cname:ident = $val:literal, )*
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub $ty);

        impl $name {
            $( $(#[$cm])* pub const $cname: $name = $name($val); )*

            /// The IANA name of this value, if it is one this crate knows.
            #[must_use]
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $val => Some(stringify!($cname)), )*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, concat!(stringify!($name), "({})"), self.0),
                }
            }
        }

        impl From<$ty> for $name {
            fn from(v: $ty) -> Self {
                $name(v)
            }
        }
    };
}

registry! {
    /// IKEv2 Payload Types (RFC 7296 §3.2). `NONE` (0) ends a payload chain.
    pub struct PayloadType(u8) {
        /// No Next Payload.
        NONE = 0,
        /// Security Association.
        SA = 33,
        /// Key Exchange.
        KE = 34,
        /// Identification - Initiator.
        IDI = 35,
        /// Identification - Responder.
        IDR = 36,
        /// Certificate.
        CERT = 37,
        /// Certificate Request.
        CERTREQ = 38,
        /// Authentication.
        AUTH = 39,
        /// Nonce.
        NONCE = 40,
        /// Notify.
        NOTIFY = 41,
        /// Delete.
        DELETE = 42,
        /// Vendor ID.
        VENDOR_ID = 43,
        /// Traffic Selector - Initiator.
        TSI = 44,
        /// Traffic Selector - Responder.
        TSR = 45,
        /// Encrypted and Authenticated.
        SK = 46,
        /// Configuration.
        CP = 47,
        /// Extensible Authentication.
        EAP = 48,
        /// Encrypted and Authenticated Fragment (RFC 7383).
        SKF = 53,
    }
}

registry! {
    /// IKEv2 Exchange Types (RFC 7296 §3.1).
    pub struct ExchangeType(u8) {
        /// IKE_SA_INIT.
        IKE_SA_INIT = 34,
        /// IKE_AUTH.
        IKE_AUTH = 35,
        /// CREATE_CHILD_SA.
        CREATE_CHILD_SA = 36,
        /// INFORMATIONAL.
        INFORMATIONAL = 37,
    }
}

registry! {
    /// Security Protocol Identifiers (RFC 7296 §3.3.1). 0 is used in Notify payloads that concern
    /// no SA.
    pub struct ProtocolId(u8) {
        /// IKE SA.
        IKE = 1,
        /// Authentication Header.
        AH = 2,
        /// Encapsulating Security Payload.
        ESP = 3,
    }
}

registry! {
    /// Transform Type Values (RFC 7296 §3.3.2).
    pub struct TransformType(u8) {
        /// Encryption Algorithm.
        ENCR = 1,
        /// Pseudorandom Function.
        PRF = 2,
        /// Integrity Algorithm.
        INTEG = 3,
        /// Diffie-Hellman Group (Key Exchange Method).
        DH = 4,
        /// Extended Sequence Numbers.
        ESN = 5,
    }
}

registry! {
    /// Authentication Method (RFC 7296 §3.8, RFC 4754, RFC 7427).
    pub struct AuthMethod(u8) {
        /// RSA Digital Signature.
        RSA_SIG = 1,
        /// Shared Key Message Integrity Code.
        SHARED_KEY_MIC = 2,
        /// DSS Digital Signature.
        DSS_SIG = 3,
        /// ECDSA with SHA-256 on the P-256 curve.
        ECDSA_256 = 9,
        /// ECDSA with SHA-384 on the P-384 curve.
        ECDSA_384 = 10,
        /// ECDSA with SHA-512 on the P-521 curve.
        ECDSA_521 = 11,
        /// Digital Signature (RFC 7427).
        DIGITAL_SIGNATURE = 14,
    }
}

registry! {
    /// Notify Message Types (RFC 7296 §3.10.1 and later RFCs). Values below 16384 are errors.
    pub struct NotifyType(u16) {
        /// A critical payload was not understood (data: the one-octet payload type).
        UNSUPPORTED_CRITICAL_PAYLOAD = 1,
        /// Unknown IKE SPI.
        INVALID_IKE_SPI = 4,
        /// Major version not supported.
        INVALID_MAJOR_VERSION = 5,
        /// Malformed message.
        INVALID_SYNTAX = 7,
        /// Message ID out of window.
        INVALID_MESSAGE_ID = 9,
        /// Unknown SPI in a protected message.
        INVALID_SPI = 11,
        /// None of the proposals was acceptable.
        NO_PROPOSAL_CHOSEN = 14,
        /// Wrong KE group (data: the two-octet accepted group).
        INVALID_KE_PAYLOAD = 17,
        /// Authentication failed.
        AUTHENTICATION_FAILED = 24,
        /// Only a single pair of traffic selectors is acceptable.
        SINGLE_PAIR_REQUIRED = 34,
        /// No more Child SAs are accepted on this IKE SA.
        NO_ADDITIONAL_SAS = 35,
        /// No internal address could be assigned.
        INTERNAL_ADDRESS_FAILURE = 36,
        /// A CP payload was required but not present.
        FAILED_CP_REQUIRED = 37,
        /// The traffic selectors are not acceptable.
        TS_UNACCEPTABLE = 38,
        /// A packet's selectors did not match its SA.
        INVALID_SELECTORS = 39,
        /// Temporary failure, retry later.
        TEMPORARY_FAILURE = 43,
        /// The Child SA to rekey was not found.
        CHILD_SA_NOT_FOUND = 44,
        /// First contact: delete old SAs with this peer.
        INITIAL_CONTACT = 16384,
        /// Window size.
        SET_WINDOW_SIZE = 16385,
        /// The responder narrowed the traffic selectors.
        ADDITIONAL_TS_POSSIBLE = 16386,
        /// IPComp supported.
        IPCOMP_SUPPORTED = 16387,
        /// NAT detection: hash of the sender's address.
        NAT_DETECTION_SOURCE_IP = 16388,
        /// NAT detection: hash of the receiver's address.
        NAT_DETECTION_DESTINATION_IP = 16389,
        /// Stateless cookie.
        COOKIE = 16390,
        /// Request transport mode for the Child SA.
        USE_TRANSPORT_MODE = 16391,
        /// HTTP certificate lookup supported.
        HTTP_CERT_LOOKUP_SUPPORTED = 16392,
        /// The Child SA being rekeyed (SPI in the notify).
        REKEY_SA = 16393,
        /// TFC padding is not supported.
        ESP_TFC_PADDING_NOT_SUPPORTED = 16394,
        /// Non-first fragments also.
        NON_FIRST_FRAGMENTS_ALSO = 16395,
        /// MOBIKE supported (RFC 4555).
        MOBIKE_SUPPORTED = 16396,
        /// IKE fragmentation supported (RFC 7383).
        IKEV2_FRAGMENTATION_SUPPORTED = 16430,
        /// Supported signature hash algorithms (RFC 7427).
        SIGNATURE_HASH_ALGORITHMS = 16431,
    }
}

impl NotifyType {
    /// Error types are those below 16384 (RFC 7296 §3.10.1).
    #[must_use]
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }
}

registry! {
    /// Configuration payload types (RFC 7296 §3.15).
    pub struct CfgType(u8) {
        /// CFG_REQUEST.
        CFG_REQUEST = 1,
        /// CFG_REPLY.
        CFG_REPLY = 2,
        /// CFG_SET.
        CFG_SET = 3,
        /// CFG_ACK.
        CFG_ACK = 4,
    }
}
