"""Static checks of the Asterisk 22 configuration in asterisk-conf/.

No Asterisk runs here. The files are read with a small parser of Asterisk's
config syntax, and the callgate-outbound dialplan is run by a small
interpreter of the few applications and functions it uses, with authorize's
variables and Dial's outcomes scripted per test.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "asterisk-conf"
SQL_REALTIME = ROOT / "sql" / "002_asterisk_realtime.sql"

CONF_FILES = [
    "asterisk.conf",
    "extensions.conf",
    "pjsip.conf",
    "extconfig.conf",
    "sorcery.conf",
    "res_pgsql.conf",
    "cdr_pgsql.conf",
    "cdr.conf",
    "cdr_manager.conf",
    "manager.conf",
    "modules.conf",
    "rtp.conf",
    "http.conf",
]

# Variables of callgate's FastAGI contract, plus the dialplan's own
# CALLGATE_ROUTE_INDEX and the CALLGATE_HOST global.
CONTRACT_VARIABLES = {
    "CALLGATE_STATUS",
    "CALLGATE_REASON",
    "CALLGATE_CAUSE",
    "CALLGATE_MAX_MS",
    "CALLGATE_DIAL_TIMEOUT",
    "CALLGATE_ROUTE_COUNT",
    "CALLGATE_ROUTE_INDEX",
    "CALLGATE_HOST",
}
ROUTE_VARIABLE = re.compile(r"CALLGATE_ROUTE_[1-9][0-9]*")

DIAL_ARGS = (
    "${CALLGATE_ROUTE_${CALLGATE_ROUTE_INDEX}},"
    "${CALLGATE_DIAL_TIMEOUT},"
    "L(${CALLGATE_MAX_MS})"
)

# Every CDR field that cdr_pgsql fills when the table has a column of that name.
CDR_FIELDS = [
    "calldate",
    "start",
    "answer",
    "end",
    "clid",
    "src",
    "dst",
    "dcontext",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
    "accountcode",
    "uniqueid",
    "linkedid",
    "userfield",
    "peeraccount",
    "sequence",
]


# ---------------------------------------------------------------- parsing


@dataclass
class Section:
    name: str
    entries: list[tuple[str, str, str]] = field(default_factory=list)

    def values(self, key: str) -> list[str]:
        return [value for k, _, value in self.entries if k == key]

    def get(self, key: str) -> str | None:
        found = self.values(key)
        return found[-1] if found else None


def strip_comment(line: str) -> str:
    """Cut an Asterisk config line at its first unescaped semicolon."""
    cut = re.search(r"(?<!\\);", line)
    return (line[: cut.start()] if cut else line).strip()


def parse_conf(name: str) -> list[Section]:
    """Parse one file into sections, keeping repeated names and keys."""
    sections: list[Section] = []
    for raw in (CONF / name).read_text(encoding="utf-8").splitlines():
        line = strip_comment(raw)
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[([^\]]+)\](\([^)]*\))?", line)
        if header:
            sections.append(Section(header.group(1)))
            continue
        entry = re.fullmatch(r"([^=]+?)\s*(=>|=)\s*(.*)", line)
        assert entry, f"{name}: cannot parse line {raw!r}"
        assert sections, f"{name}: entry before any section: {raw!r}"
        sections[-1].entries.append((entry.group(1), entry.group(2), entry.group(3)))
    return sections


def section(name: str, section_name: str) -> Section:
    found = [s for s in parse_conf(name) if s.name == section_name]
    assert len(found) == 1, f"{name}: expected one [{section_name}], got {len(found)}"
    return found[0]


def typed_section(name: str, section_name: str, kind: str) -> Section:
    found = [
        s for s in parse_conf(name) if s.name == section_name and s.get("type") == kind
    ]
    assert len(found) == 1, f"{name}: expected one [{section_name}] type={kind}"
    return found[0]


@dataclass
class Step:
    label: str | None
    app: str
    args: str


def parse_dialplan() -> dict[str, dict[str, list[Step]]]:
    """Return context -> extension -> steps, in priority order."""
    contexts: dict[str, dict[str, list[Step]]] = {}
    for sec in parse_conf("extensions.conf"):
        if sec.name in ("general", "globals"):
            continue
        extensions: dict[str, list[Step]] = contexts.setdefault(sec.name, {})
        current: list[Step] | None = None
        for key, op, value in sec.entries:
            if key not in ("exten", "same"):
                continue
            assert op == "=>", f"[{sec.name}] {key} must use =>"
            if key == "exten":
                pattern, priority, app = value.split(",", 2)
                assert priority == "1", f"[{sec.name}] {pattern} must start at 1"
                current = extensions.setdefault(pattern, [])
            else:
                assert current is not None, f"[{sec.name}] same => before exten"
                priority, app = value.split(",", 1)
                assert re.fullmatch(r"n(\([a-z_]+\))?", priority), priority
            label = re.search(r"\(([a-z_]+)\)", priority)
            call = re.fullmatch(r"(\w+)\((.*)\)", app)
            assert call, f"[{sec.name}] cannot parse application {app!r}"
            current.append(
                Step(label.group(1) if label else None, call.group(1), call.group(2))
            )
    return contexts


def dialplan_globals() -> dict[str, str]:
    return {k: v for k, _, v in section("extensions.conf", "globals").entries}


# ------------------------------------------------ dialplan interpretation


def find_closing(text: str, start: int, opening: str, closing: str) -> int:
    """Return the index of the bracket closing the one at text[start]."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return index
    raise AssertionError(f"unbalanced {opening}{closing} in {text!r}")


TOKEN = re.compile(r'\s*("[^"]*"|!=|>=|<=|[=<>&|+\-]|[^\s"=<>&|+\-!]+)')


def evaluate(expression: str) -> str:
    """Evaluate an Asterisk $[...] expression after substitution."""
    tokens = [m.group(1) for m in TOKEN.finditer(expression)]
    assert "".join(tokens).replace(" ", "") == expression.replace(" ", ""), (
        f"cannot tokenize expression {expression!r}"
    )
    position = 0

    def value(token: str) -> str:
        return token[1:-1] if token.startswith('"') else token

    def numeric(text: str) -> int | None:
        return int(text) if re.fullmatch(r"-?[0-9]+", text) else None

    def parse_level(operators: list[set[str]]) -> str:
        nonlocal position
        if not operators:
            token = tokens[position]
            position += 1
            return value(token)
        left = parse_level(operators[1:])
        while position < len(tokens) and tokens[position] in operators[0]:
            operator = tokens[position]
            position += 1
            right = parse_level(operators[1:])
            left = apply(operator, left, right)
        return left

    def apply(operator: str, left: str, right: str) -> str:
        if operator == "|":
            return left if truth(left) else right
        if operator == "&":
            return left if truth(left) and truth(right) else "0"
        a, b = numeric(left), numeric(right)
        if operator in "+-":
            assert a is not None and b is not None, f"{left} {operator} {right}"
            return str(a + b if operator == "+" else a - b)
        pair: tuple[int, int] | tuple[str, str] = (
            (a, b) if a is not None and b is not None else (left, right)
        )
        results = {
            "=": pair[0] == pair[1],
            "!=": pair[0] != pair[1],
            ">=": pair[0] >= pair[1],  # type: ignore[operator]
            "<=": pair[0] <= pair[1],  # type: ignore[operator]
            ">": pair[0] > pair[1],  # type: ignore[operator]
            "<": pair[0] < pair[1],  # type: ignore[operator]
        }
        return "1" if results[operator] else "0"

    result = parse_level([{"|"}, {"&"}, {"=", "!=", ">=", "<=", ">", "<"}, {"+", "-"}])
    assert position == len(tokens), f"trailing tokens in {expression!r}"
    return result


def truth(text: str) -> bool:
    """Apply Asterisk's condition rule: empty and 0 are false."""
    text = text.strip()
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text) != 0
    return text != ""


def call_function(name: str, args: str, variables: dict[str, str]) -> str:
    if name == "REGEX":
        match = re.fullmatch(r'"([^"]*)" ?(.*)', args)
        assert match, f"REGEX arguments {args!r}"
        return "1" if re.search(match.group(1), match.group(2)) else "0"
    if name == "IF":
        condition, _, branches = args.partition("?")
        when_true, _, when_false = branches.partition(":")
        return when_true if truth(condition) else when_false
    raise AssertionError(f"the interpreter does not know function {name}()")


def substitute(text: str, variables: dict[str, str]) -> str:
    """Expand ${...} and $[...] the way Asterisk does, innermost first."""
    out = []
    index = 0
    while index < len(text):
        if text.startswith("${", index):
            end = find_closing(text, index + 1, "{", "}")
            inner = substitute(text[index + 2 : end], variables)
            function = re.fullmatch(r"([A-Z_]+)\((.*)\)", inner)
            if function:
                out.append(
                    call_function(function.group(1), function.group(2), variables)
                )
            else:
                out.append(variables.get(inner, ""))
            index = end + 1
        elif text.startswith("$[", index):
            end = find_closing(text, index + 1, "[", "]")
            out.append(evaluate(substitute(text[index + 2 : end], variables)))
            index = end + 1
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


@dataclass
class CallResult:
    dialed: list[str]
    dial_timeouts: list[str]
    dial_limits: list[str]
    hangup_cause: str | None
    variables: dict[str, str]
    agi_urls: list[str]


def run_outbound(
    extension: str,
    authorize: dict[str, str] | None,
    outcomes: dict[str, tuple[str, str]] | None = None,
    channel: dict[str, str] | None = None,
) -> CallResult:
    """Run one call through callgate-outbound.

    authorize contains the variables the AGI sets; None means the AGI failed
    (AGISTATUS=FAILURE). outcomes maps a dial string to the (DIALSTATUS,
    HANGUPCAUSE) that Dial leaves.
    """
    steps = parse_dialplan()["callgate-outbound"][extension]
    variables = dict(dialplan_globals())
    variables.update(channel or {})
    outcomes = outcomes or {}
    labels = {step.label: i for i, step in enumerate(steps) if step.label}
    result = CallResult([], [], [], None, variables, [])
    index = 0
    for _ in range(200):
        if index >= len(steps):
            return result
        step = steps[index]
        index += 1
        if step.app == "Set":
            name, _, raw = step.args.partition("=")
            variables[name] = substitute(raw, variables)
        elif step.app == "AGI":
            result.agi_urls.append(substitute(step.args, variables))
            if authorize is None:
                variables["AGISTATUS"] = "FAILURE"
            else:
                variables["AGISTATUS"] = "SUCCESS"
                variables.update(authorize)
        elif step.app == "GotoIf":
            condition, _, targets = step.args.partition("?")
            if_true, _, if_false = targets.partition(":")
            target = if_true if truth(substitute(condition, variables)) else if_false
            if target:
                index = labels[target]
        elif step.app == "Goto":
            index = labels[step.args]
        elif step.app == "Dial":
            route, timeout, options = substitute(step.args, variables).split(",")
            result.dialed.append(route)
            result.dial_timeouts.append(timeout)
            result.dial_limits.append(options)
            status, cause = outcomes.get(route, ("ANSWER", "16"))
            variables["DIALSTATUS"] = status
            variables["HANGUPCAUSE"] = cause
        elif step.app == "Hangup":
            result.hangup_cause = substitute(step.args, variables) or None
            return result
        else:
            raise AssertionError(f"the interpreter does not know {step.app}()")
    raise AssertionError("the dialplan loops")


def authorized(routes: list[str], **extra: str) -> dict[str, str]:
    variables = {
        "CALLGATE_STATUS": "OK",
        "CALLGATE_REASON": "ok",
        "CALLGATE_MAX_MS": "1740000",
        "CALLGATE_DIAL_TIMEOUT": "60",
        "CALLGATE_ROUTE_COUNT": str(len(routes)),
    }
    for number, route in enumerate(routes, start=1):
        variables[f"CALLGATE_ROUTE_{number}"] = route
    variables.update(extra)
    return variables


ROUTE_A = "PJSIP/15555550101@carrier"
ROUTE_B = "PJSIP/15555550101@carrier2"
ROUTE_C = "PJSIP/15555550101@carrier3"
OUTBOUND_PATTERNS = ["_X.", "_+X."]


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("name", CONF_FILES)
def test_conf_file_exists(name: str) -> None:
    assert (CONF / name).is_file(), f"asterisk-conf/{name} is missing"
    assert parse_conf(name), f"asterisk-conf/{name} has no section"


def test_asterisk_conf_sets_systemname() -> None:
    name = section("asterisk.conf", "options").get("systemname")
    assert name
    # A hyphen is Asterisk's separator between the name and the id.
    assert re.fullmatch(r"[A-Za-z0-9_]+", name)


# --------------------------------------------------------------- dialplan


def test_outbound_context_has_both_patterns() -> None:
    extensions = parse_dialplan()["callgate-outbound"]
    for pattern in OUTBOUND_PATTERNS:
        assert pattern in extensions


def test_outbound_patterns_run_the_same_steps() -> None:
    extensions = parse_dialplan()["callgate-outbound"]
    assert extensions["_X."] == extensions["_+X."]


def test_outbound_context_includes_nothing() -> None:
    # An include would let a number that authorize never saw reach a dialplan.
    for name in ("callgate-outbound", "carrier-inbound"):
        assert section("extensions.conf", name).values("include") == []


@pytest.mark.parametrize("pattern", OUTBOUND_PATTERNS)
def test_outbound_authorize_before_dial(pattern: str) -> None:
    steps = parse_dialplan()["callgate-outbound"][pattern]
    apps = [step.app for step in steps]
    agi = apps.index("AGI")
    dial = apps.index("Dial")
    assert steps[agi].args == "agi://${CALLGATE_HOST}:4573/authorize"
    assert agi < dial
    assert apps.count("Dial") == 1
    assert apps.count("AGI") == 1


@pytest.mark.parametrize("pattern", OUTBOUND_PATTERNS)
def test_outbound_clears_status_before_authorize(pattern: str) -> None:
    steps = parse_dialplan()["callgate-outbound"][pattern]
    agi = [step.app for step in steps].index("AGI")
    before = [(step.app, step.args) for step in steps[:agi]]
    assert ("Set", "CALLGATE_STATUS=") in before


@pytest.mark.parametrize("pattern", OUTBOUND_PATTERNS)
def test_outbound_dial_uses_contract_arguments(pattern: str) -> None:
    steps = parse_dialplan()["callgate-outbound"][pattern]
    dial = next(step for step in steps if step.app == "Dial")
    assert dial.args == DIAL_ARGS


@pytest.mark.parametrize("pattern", OUTBOUND_PATTERNS)
def test_outbound_checks_status_and_agistatus(pattern: str) -> None:
    steps = parse_dialplan()["callgate-outbound"][pattern]
    dial = [step.app for step in steps].index("Dial")
    conditions = " ".join(s.args for s in steps[:dial] if s.app == "GotoIf")
    assert '"${CALLGATE_STATUS}" != "OK"' in conditions
    assert '"${AGISTATUS}" != "SUCCESS"' in conditions


@pytest.mark.parametrize("pattern", OUTBOUND_PATTERNS)
def test_outbound_never_answers_caller(pattern: str) -> None:
    # ANSWEREDTIME counts from the caller's answer.
    apps = {step.app for step in parse_dialplan()["callgate-outbound"][pattern]}
    assert apps.isdisjoint({"Answer", "Playback", "Background", "Wait"})


@pytest.mark.parametrize("pattern", OUTBOUND_PATTERNS)
def test_failover_names_only_unavailable_and_congestion(pattern: str) -> None:
    steps = parse_dialplan()["callgate-outbound"][pattern]
    statuses: set[str] = set()
    for step in steps:
        if "${DIALSTATUS}" in step.args:
            statuses.update(re.findall(r'"\$\{DIALSTATUS\}" !?= "([A-Z]+)"', step.args))
    assert statuses == {"CHANUNAVAIL", "CONGESTION"}


def test_h_extension_runs_settle() -> None:
    steps = parse_dialplan()["callgate-outbound"]["h"]
    assert steps[0].app == "AGI"
    assert steps[0].args == "agi://${CALLGATE_HOST}:4573/settle"


def test_dialplan_reads_only_contract_variables() -> None:
    text = "\n".join(
        strip_comment(line)
        for line in (CONF / "extensions.conf").read_text().splitlines()
    )
    read = set(re.findall(r"\$\{(CALLGATE_[A-Z0-9_]*)", text))
    # The route is read through the index, which leaves the bare prefix.
    read.discard("CALLGATE_ROUTE_")
    unknown = {
        name
        for name in read
        if name not in CONTRACT_VARIABLES and not ROUTE_VARIABLE.fullmatch(name)
    }
    assert unknown == set()
    assert "${CALLGATE_ROUTE_${CALLGATE_ROUTE_INDEX}}" in text


def test_dialplan_writes_only_status_and_route_index() -> None:
    written = set()
    for steps in parse_dialplan()["callgate-outbound"].values():
        for step in steps:
            if step.app == "Set":
                written.add(step.args.partition("=")[0])
    assert written == {"CALLGATE_STATUS", "CALLGATE_ROUTE_INDEX"}


def test_callgate_host_is_local_or_service_name() -> None:
    host = dialplan_globals()["CALLGATE_HOST"]
    assert host in {"127.0.0.1", "[::1]", "localhost", "callgate"}


# ------------------------------------------------- dialplan, interpreted


@pytest.mark.parametrize("pattern", OUTBOUND_PATTERNS)
def test_call_answered_on_first_route(pattern: str) -> None:
    result = run_outbound(pattern, authorized([ROUTE_A, ROUTE_B]))
    assert result.agi_urls == ["agi://callgate:4573/authorize"]
    assert result.dialed == [ROUTE_A]
    assert result.dial_timeouts == ["60"]
    assert result.dial_limits == ["L(1740000)"]
    assert result.variables["CALLGATE_ROUTE_INDEX"] == "1"
    assert result.hangup_cause is None


@pytest.mark.parametrize("status", ["CHANUNAVAIL", "CONGESTION"])
def test_call_fails_over_to_next_route(status: str) -> None:
    outcomes = {ROUTE_A: (status, "34")}
    result = run_outbound("_X.", authorized([ROUTE_A, ROUTE_B]), outcomes)
    assert result.dialed == [ROUTE_A, ROUTE_B]
    assert result.variables["CALLGATE_ROUTE_INDEX"] == "2"
    assert result.hangup_cause is None


@pytest.mark.parametrize("status", ["BUSY", "NOANSWER", "CANCEL", "ANSWER"])
def test_call_ends_without_failover(status: str) -> None:
    outcomes = {ROUTE_A: (status, "17")}
    result = run_outbound("_X.", authorized([ROUTE_A, ROUTE_B]), outcomes)
    assert result.dialed == [ROUTE_A]
    assert result.variables["CALLGATE_ROUTE_INDEX"] == "1"
    assert result.hangup_cause is None


def test_failover_stops_at_route_count() -> None:
    # Route 3 is present, but only two routes were authorized.
    routes = authorized([ROUTE_A, ROUTE_B], CALLGATE_ROUTE_3=ROUTE_C)
    outcomes = {ROUTE_A: ("CONGESTION", "34"), ROUTE_B: ("CONGESTION", "38")}
    result = run_outbound("_X.", routes, outcomes)
    assert result.dialed == [ROUTE_A, ROUTE_B]
    assert result.variables["CALLGATE_ROUTE_INDEX"] == "2"
    assert result.hangup_cause == "38"


@pytest.mark.parametrize("cause", ["3", "", "0"])
def test_all_routes_unreachable_hang_up_34(cause: str) -> None:
    outcomes = {ROUTE_A: ("CHANUNAVAIL", cause)}
    result = run_outbound("_+X.", authorized([ROUTE_A]), outcomes)
    assert result.dialed == [ROUTE_A]
    assert result.hangup_cause == "34"


@pytest.mark.parametrize(("cause", "expected"), [("1", "1"), ("", "21")])
def test_rejected_call_hangs_up_with_cause(cause: str, expected: str) -> None:
    authorize = {
        "CALLGATE_STATUS": "REJECTED",
        "CALLGATE_REASON": "no_rate",
        "CALLGATE_CAUSE": cause,
    }
    result = run_outbound("_X.", authorize)
    assert result.dialed == []
    assert result.hangup_cause == expected


@pytest.mark.parametrize(("cause", "expected"), [("41", "41"), ("", "41")])
def test_error_status_hangs_up_with_cause(cause: str, expected: str) -> None:
    authorize = {"CALLGATE_STATUS": "ERROR", "CALLGATE_CAUSE": cause}
    result = run_outbound("_X.", authorize)
    assert result.dialed == []
    assert result.hangup_cause == expected


def test_failed_agi_fails_closed() -> None:
    # A status left on the channel from elsewhere must not let the call through.
    result = run_outbound("_X.", None, channel={"CALLGATE_STATUS": "OK"})
    assert result.dialed == []
    assert result.hangup_cause == "41"


@pytest.mark.parametrize(
    "missing",
    [
        "CALLGATE_MAX_MS",
        "CALLGATE_ROUTE_COUNT",
        "CALLGATE_DIAL_TIMEOUT",
        "CALLGATE_ROUTE_1",
    ],
)
def test_ok_without_required_variable_fails_closed(missing: str) -> None:
    authorize = authorized([ROUTE_A])
    del authorize[missing]
    result = run_outbound("_X.", authorize)
    assert result.dialed == []
    assert result.hangup_cause == "41"


@pytest.mark.parametrize("limit", ["0", "-5", "abc"])
def test_ok_with_invalid_limit_fails_closed(limit: str) -> None:
    result = run_outbound("_X.", authorized([ROUTE_A], CALLGATE_MAX_MS=limit))
    assert result.dialed == []
    assert result.hangup_cause == "41"


# ------------------------------------------------------------------ PJSIP


def test_pjsip_global_identifier_order() -> None:
    glob = typed_section("pjsip.conf", "global", "global")
    assert glob.get("endpoint_identifier_order") == "ip,username"


def test_pjsip_transports() -> None:
    udp = typed_section("pjsip.conf", "transport-udp", "transport")
    tcp = typed_section("pjsip.conf", "transport-tcp", "transport")
    wss = typed_section("pjsip.conf", "transport-wss", "transport")
    assert udp.get("protocol") == "udp"
    assert (udp.get("bind") or "").endswith(":5060")
    assert tcp.get("protocol") == "tcp"
    assert wss.get("protocol") == "wss"


def test_sql_names_the_wss_transport() -> None:
    assert "'transport-wss'" in SQL_REALTIME.read_text()


def test_carrier_trunk() -> None:
    endpoint = typed_section("pjsip.conf", "carrier", "endpoint")
    aor = typed_section("pjsip.conf", "carrier", "aor")
    identify = typed_section("pjsip.conf", "carrier", "identify")
    assert endpoint.get("context") == "carrier-inbound"
    assert endpoint.get("direct_media") == "no"
    assert endpoint.get("rtp_timeout") == "60"
    assert endpoint.get("aors") == "carrier"
    assert endpoint.get("identify_by") == "ip"
    assert aor.get("qualify_frequency") == "30"
    assert identify.get("endpoint") == "carrier"
    assert identify.get("match")


def test_carrier_defaults_stay_local() -> None:
    aor = typed_section("pjsip.conf", "carrier", "aor")
    identify = typed_section("pjsip.conf", "carrier", "identify")
    assert (aor.get("contact") or "").startswith("sip:127.0.0.1:")
    assert (identify.get("match") or "").startswith("127.0.0.1")


def test_pjsip_has_no_customer_endpoints() -> None:
    endpoints = [
        s.name for s in parse_conf("pjsip.conf") if s.get("type") == "endpoint"
    ]
    assert endpoints == ["carrier"]


def test_sorcery_uses_realtime() -> None:
    pjsip = section("sorcery.conf", "res_pjsip")
    identify = section("sorcery.conf", "res_pjsip_endpoint_identifier_ip")
    assert "realtime,ps_endpoints" in pjsip.values("endpoint")
    assert "realtime,ps_auths" in pjsip.values("auth")
    assert "realtime,ps_aors" in pjsip.values("aor")
    assert "realtime,ps_contacts" in pjsip.values("contact")
    assert "realtime,ps_endpoint_id_ips" in identify.values("identify")


def test_sorcery_keeps_static_trunks_first() -> None:
    # Mapping a type turns off pjsip.conf for it unless the config wizard is
    # listed, and listing it first lets no SIP account shadow a trunk.
    pjsip = section("sorcery.conf", "res_pjsip")
    identify = section("sorcery.conf", "res_pjsip_endpoint_identifier_ip")
    for sec, kind in [
        (pjsip, "endpoint"),
        (pjsip, "auth"),
        (pjsip, "aor"),
        (identify, "identify"),
    ]:
        wizards = sec.values(kind)
        assert wizards[0] == f"config,pjsip.conf,criteria=type={kind}"


@pytest.mark.parametrize(
    ("sec", "kind", "cache"),
    [
        ("res_pjsip", "endpoint", "ep"),
        ("res_pjsip", "auth", "auth"),
        ("res_pjsip", "aor", "aor"),
        ("res_pjsip_endpoint_identifier_ip", "identify", "ident"),
    ],
)
def test_sorcery_cache_names(sec: str, kind: str, cache: str) -> None:
    value = section("sorcery.conf", sec).get(f"{kind}/cache") or ""
    options = value.split(",")
    assert options[0] == "memory_cache"
    assert f"name={cache}" in options


def test_identify_cache_holds_whole_table() -> None:
    sec = section("sorcery.conf", "res_pjsip_endpoint_identifier_ip")
    assert "full_backend_cache=yes" in (sec.get("identify/cache") or "").split(",")


def test_extconfig_maps_realtime_tables() -> None:
    settings = section("extconfig.conf", "settings")
    for table in [
        "ps_endpoints",
        "ps_auths",
        "ps_aors",
        "ps_endpoint_id_ips",
        "ps_contacts",
    ]:
        assert settings.get(table) == "pgsql,callgate", table


def test_res_pgsql_connects_to_callgate() -> None:
    general = section("res_pgsql.conf", "general")
    assert general.get("dbname") == "callgate"
    assert general.get("dbuser") == "asterisk"
    assert general.get("dbhost") in {"postgres", "127.0.0.1", "localhost"}


def test_modules_preload_pgsql_driver() -> None:
    modules = section("modules.conf", "modules")
    assert modules.get("autoload") == "yes"
    assert "res_config_pgsql.so" in modules.values("preload")
    assert "chan_sip.so" in modules.values("noload")
    noload = set(modules.values("noload"))
    for needed in ["cdr_pgsql.so", "cdr_manager.so", "res_agi.so", "chan_pjsip.so"]:
        assert needed not in noload


# -------------------------------------------------------------- CDR, AMI


def test_cdr_pgsql_section_and_table() -> None:
    names = [s.name for s in parse_conf("cdr_pgsql.conf")]
    assert names == ["global"]
    glob = section("cdr_pgsql.conf", "global")
    assert glob.get("table") == "cdr"
    assert glob.get("encoding") == "UTF8"
    assert glob.get("timezone") == "UTC"
    assert glob.get("dbname") == "callgate"


def test_cdr_posts_records_at_once() -> None:
    general = section("cdr.conf", "general")
    assert general.get("enable") == "yes"
    assert general.get("batch") == "no"


def test_cdr_manager_enabled() -> None:
    assert section("cdr_manager.conf", "general").get("enabled") == "yes"


def test_manager_user_classes() -> None:
    user = section("manager.conf", "callgate")
    assert set((user.get("read") or "").split(",")) == {
        "system",
        "call",
        "cdr",
        "reporting",
    }
    assert set((user.get("write") or "").split(",")) == {
        "system",
        "call",
        "originate",
        "command",
        "reporting",
    }


def test_manager_login_only_from_permitted_networks() -> None:
    general = section("manager.conf", "general")
    user = section("manager.conf", "callgate")
    assert general.get("enabled") == "yes"
    assert general.get("port") == "5038"
    assert user.get("deny") == "0.0.0.0/0.0.0.0"


def sql_table_columns(text: str, table: str) -> set[str]:
    body = re.search(rf"CREATE TABLE {table} \((.*?)\n\);", text, re.S)
    assert body, f"no CREATE TABLE {table} in {SQL_REALTIME.name}"
    columns = set()
    for line in body.group(1).splitlines():
        first = line.strip().split(" ", 1)[0]
        if first and first.upper() not in {"UNIQUE", "PRIMARY", "CHECK"}:
            columns.add(first.strip('"'))
    return columns


def test_sql_cdr_table_covers_cdr_fields() -> None:
    columns = sql_table_columns(SQL_REALTIME.read_text(), "cdr")
    missing = [name for name in CDR_FIELDS if name not in columns]
    assert missing == []


def test_sql_cdr_columns_accept_missing_values() -> None:
    # cdr_pgsql sends '' for a NOT NULL column without a default.
    text = SQL_REALTIME.read_text()
    body = re.search(r"CREATE TABLE cdr \((.*?)\n\);", text, re.S)
    assert body
    for line in body.group(1).splitlines():
        if "NOT NULL" in line.upper():
            assert "DEFAULT" in line.upper() or "PRIMARY KEY" in line.upper(), line


def test_sql_realtime_objects_exist() -> None:
    text = SQL_REALTIME.read_text()
    for view in ["ps_endpoints", "ps_auths", "ps_aors", "ps_endpoint_id_ips"]:
        assert f"CREATE VIEW {view} AS" in text
    assert "CREATE TABLE ps_contacts (" in text
