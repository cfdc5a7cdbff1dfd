"""Domain XML building, device replace-in-place, and the agent's metadata."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hookvisor.virt import domain_xml as dx
from hookvisor.virt.spec import DiskSpec, NicSpec, VmSpec

UUID = "8f1e4c52-1d2a-4b7e-9a61-2b0d5c3e7f10"


def spec() -> VmSpec:
    return VmSpec(
        vm_id=UUID,
        name="hvtest-xml",
        mem_mib=64,
        smp=2,
        devices=(
            DiskSpec("disk", "/tmp/a.img", "raw", "virtio", False, 1, {"x": "1"}),
            NicSpec("bridge", "br0", "52:54:00:aa:bb:cc", "virtio", True, {"speed": "1000"}),
            DiskSpec("cdrom", None, "raw", "ide", True, None),
            DiskSpec("disk", "/tmp/b.qcow2", "cow", "virtio", True, None),
        ),
    )


def test_build_has_identity_resources_and_devices_in_order() -> None:
    xml = dx.build(spec(), "kvm")
    root = dx.parse_domain(xml)
    assert root.get("type") == "kvm"
    assert dx.identity(xml) == (UUID, "hvtest-xml")
    assert root.findtext("memory") == "64" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "2"
    refs = dx.devices(xml)
    assert [r.key for r in refs] == [
        "disk:vda", "interface:52:54:00:aa:bb:cc", "disk:hda", "disk:vdb"
    ]
    assert 'type="qcow2"' in refs[3].xml and "<readonly />" in refs[3].xml
    assert "<boot order=\"1\" />" in refs[0].xml
    assert "<readonly />" in refs[2].xml  # a cdrom is always read-only


def test_replace_device_keeps_order() -> None:
    xml = dx.build(spec(), "test")
    new = "<interface type='bridge'><mac address='52:54:00:aa:bb:cc'/>" \
          "<source bridge='br9'/><bandwidth/></interface>"
    out = dx.replace_device(xml, 1, new)
    refs = dx.devices(out)
    assert [r.kind for r in refs] == ["disk", "interface", "disk", "disk"]
    assert "br9" in refs[1].xml and "<bandwidth />" in refs[1].xml
    with pytest.raises(dx.DomainXmlError):
        dx.replace_device(xml, 9, new)
    with pytest.raises(dx.DomainXmlError, match="not well-formed"):
        dx.replace_device(xml, 1, "<interface")


def test_metadata_round_trip_and_replace() -> None:
    xml = dx.build(spec(), "test")
    assert dx.get_metadata(xml) is None
    meta = dx.Metadata({"numa": "a<b&c"}, {"interface:52:54:00:aa:bb:cc": {"speed": "1"}},
                       {"vmId": UUID, "custom": {"numa": "a<b&c"}})
    once = dx.set_metadata(xml, meta)
    twice = dx.set_metadata(once, meta)
    assert twice.count(f'xmlns:hookvisor="{dx.NS}"') == 1
    assert dx.get_metadata(twice) == meta
    # Other applications' metadata stays.
    other = once.replace("<metadata>", "<metadata><o:x xmlns:o='urn:other'>1</o:x>")
    assert "urn:other" in dx.set_metadata(other, dx.Metadata())


def test_build_writes_what_elementtree_writes() -> None:
    # build() writes text itself; ElementTree must read it back to the same text,
    # and metadata built in must be what set_metadata would have put there.
    tricky = VmSpec(UUID, "a&b <c> \"d\" 'e'", 64, 1, (
        NicSpec("network", 'n&"\t<x>\n', "52:54:00:aa:bb:cc", "e1000", False),
        DiskSpec("disk", "/tmp/a&b.img", "cow", "scsi", False, 2),
    ))
    meta = dx.Metadata({"p": 'v&<>"', "empty": ""}, {"disk:sda": {"x": "1"}, "disk:sdb": {}},
                       {"vmName": "a&<\"", "n": 1})
    for s in (spec(), tricky, VmSpec(UUID, "bare", 1, 1)):
        for m in (None, meta):
            built = dx.build(s, "kvm", meta=m)
            assert dx.to_string(dx.parse(built)) == built
        assert dx.build(s, "kvm", meta=meta) == dx.set_metadata(dx.build(s, "kvm"), meta)
    assert dx.get_metadata(dx.build(tricky, "kvm", meta=meta)) == meta


# Text XML can carry (no control characters but tab and newline; no surrogates). A CR
# in element text reads back as a newline (XML's end-of-line rule), for ElementTree too.
_XML_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=[
    chr(c) for c in range(32) if chr(c) not in "\t\n"] + ["\ufffe", "\uffff"]))


@given(name=_XML_TEXT, path=_XML_TEXT, prop=_XML_TEXT)
def test_build_escapes_as_elementtree_for_any_text(name: str, path: str, prop: str) -> None:
    # The escapes' fast path (nothing to escape) and slow path both write what
    # ElementTree writes: in text (the name, a property) and attributes (a path).
    s = VmSpec(UUID, name, 64, 1,
               (DiskSpec("disk", "/" + path + "\r", "raw", "virtio", False, None),))
    built = dx.build(s, "kvm", meta=dx.Metadata({"p": prop}, {}, {}))
    assert dx.to_string(dx.parse(built)) == built


def test_set_uuid_and_bad_xml() -> None:
    xml = "<domain type='test'><name>n</name><memory>1</memory></domain>"
    assert dx.identity(dx.set_uuid(xml, UUID)) == (UUID, "n")
    with pytest.raises(dx.DomainXmlError, match="not <domain>"):
        dx.parse_domain("<dom/>")
    with pytest.raises(dx.DomainXmlError, match="not well-formed"):
        dx.parse_domain("<domain>")


def test_device_key_needs_mac_or_target() -> None:
    xml = "<domain><devices><interface type='user'/><disk/><video/></devices></domain>"
    assert [r.key for r in dx.devices(xml)] == [None, None, None]
