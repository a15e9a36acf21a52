"""OpenMoji captions and coarse classes for emoji32: Unicode names of a file's codepoints, flags as
"flag: <country>", and a class from ordered keyword rules."""
from __future__ import annotations

import re
import unicodedata

_SKIN = {0x1F3FB: "light skin tone", 0x1F3FC: "medium-light skin tone", 0x1F3FD: "medium skin tone",
         0x1F3FE: "medium-dark skin tone", 0x1F3FF: "dark skin tone"}
# Emoji newer than the unicodedata table of Python 3.11 (Unicode 14): Unicode 15, 16 and 17 names.
_NEW_NAMES = {
    0x1F6DC: "wireless", 0x1FA75: "light blue heart", 0x1FA76: "grey heart", 0x1FA77: "pink heart",
    0x1FA87: "maracas", 0x1FA88: "flute", 0x1FAAD: "folding hand fan", 0x1FAAE: "hair pick", 0x1FAAF: "khanda",
    0x1FABB: "hyacinth", 0x1FABC: "jellyfish", 0x1FABD: "wing", 0x1FABF: "goose", 0x1FACE: "moose",
    0x1FACF: "donkey", 0x1FADA: "ginger root", 0x1FADB: "pea pod", 0x1FAE8: "shaking face",
    0x1FAF7: "leftwards pushing hand", 0x1FAF8: "rightwards pushing hand",  # 15.0
    0x1FA89: "harp", 0x1FA8F: "shovel", 0x1FABE: "leafless tree", 0x1FAC6: "fingerprint",
    0x1FADC: "root vegetable", 0x1FADF: "splatter", 0x1FAE9: "face with bags under eyes",  # 16.0
    0x1F6D8: "landslide", 0x1FA8A: "trombone", 0x1FA8E: "treasure chest", 0x1FAC8: "hairy creature",
    0x1FACD: "orca", 0x1FAEA: "distorted face", 0x1FAEF: "fight cloud",  # 17.0
}
_IN_ZWJ = {0x27A1: "facing right", 0x2B1B: "black", 0x2B1C: "white"}  # names that read better inside a sequence
_FLAG_EXTRA = {"EU": "European Union", "UN": "United Nations", "XK": "Kosovo", "AC": "Ascension Island",
               "CP": "Clipperton Island", "DG": "Diego Garcia", "EA": "Ceuta & Melilla", "IC": "Canary Islands",
               "TA": "Tristan da Cunha", "CQ": "Sark"}


def _place_name(code: str) -> str:
    """ISO 3166-1 alpha-2 or 3166-2 code -> name (pycountry), falling back to the code itself."""
    try:
        import pycountry
        place = pycountry.subdivisions.get(code=code) if "-" in code else pycountry.countries.get(alpha_2=code)
    except (ImportError, KeyError, LookupError):
        place = None
    if place is None:
        return _FLAG_EXTRA.get(code, code)
    name = re.sub(r"\s*\[.*?\]", "", getattr(place, "common_name", None) or place.name)
    return re.sub(r"^(.*), (.* (?:of|de|the))$", r"\2 \1", name)  # "Palestine, State of" -> "State of Palestine"


def emoji_caption(stem: str) -> str:
    """Caption of an OpenMoji file stem such as "1F437" -> "pig face".

    Unicode names, lower-cased, joined by spaces; FE0F/200D are dropped, skin-tone modifiers become a
    ": medium skin tone" suffix, a final gender sign of a sequence becomes a "man"/"woman" prefix, two regional
    indicators give "flag: <country>", tag sequences "flag: <subdivision>", keycaps "keycap: <name>". OpenMoji
    extras (private-use codepoints, no Unicode name) get "openmoji extra <hex>".
    """
    cps = [int(x, 16) for x in stem.split("-")]
    if any(0xE000 <= c <= 0xF8FF for c in cps):
        return f"openmoji extra {stem.lower()}"
    if len(cps) == 2 and all(0x1F1E6 <= c <= 0x1F1FF for c in cps):
        return "flag: " + _place_name("".join(chr(c - 0x1F1E6 + 65) for c in cps))
    tags = "".join(chr(c - 0xE0000) for c in cps if 0xE0030 <= c <= 0xE007A).upper()
    if cps[0] == 0x1F3F4 and tags:
        return "flag: " + _place_name(f"{tags[:2]}-{tags[2:]}")
    if 0x20E3 in cps:
        return "keycap: " + unicodedata.name(chr(cps[0])).lower()
    tones = list(dict.fromkeys(_SKIN[c] for c in cps if c in _SKIN))
    parts = [c for c in cps if c not in _SKIN and c not in (0xFE0F, 0x200D)]
    if not parts:
        return tones[0]
    gender = [c for c in parts if c in (0x2640, 0x2642)] if len(parts) > 1 else []
    names = [_IN_ZWJ[c] if len(parts) > 1 and c in _IN_ZWJ else
             (unicodedata.name(chr(c), "") or _NEW_NAMES.get(c, f"u+{c:04x}")).lower().removeprefix("emoji component ")
             for c in parts if c not in gender]
    names = ["woman" if gender[0] == 0x2640 else "man"] + names if gender else names
    return " ".join(names) + (": " + ", ".join(tones) if tones else "")


EMOJI_CLASSES = ["face", "person", "body", "animal", "nature", "food", "travel", "activity", "object", "symbol",
                 "flag", "extra"]
_W = r"(?:{})s?\b"
_EMOJI_RULES = {name: re.compile(r"\b" + (_W if name != "person" else r"(?:{})\b").format(words))
                for name, words in [
    ("food", "tomato|aubergine|maize|pepper|mushroom|peanut|chestnut|bread|croissant|pretzel|bagel|pancake|waffle|"
             "cheese|meat|poultry|bacon|hamburger|fries|pizza|hot dog|sandwich|taco|burrito|tamale|falafel|egg|"
             "cooking|fondue|bowl|salad|popcorn|butter|salt|bento|rice|spaghetti|potato|oden|sushi|fried|dango|"
             "dumpling|cookie|takeout|ice cream|shaved ice|doughnut|cake|cupcake|pie|chocolate|candy|lollipop|"
             "custard|honey|milk|beverage|teapot|teacup|wine|cocktail|beer|tumbler|ice cube|chopsticks|fork|spoon|"
             "grapes|melon|tangerine|lemon|banana|pineapple|mango|apple|pear|peach|cherries|strawberry|"
             "blueberries|kiwifruit|coconut|olive|avocado|carrot|cucumber|leafy green|broccoli|garlic|onion|beans|"
             "pea pod|ginger|root vegetable|flatbread|oyster|(?<!lotion )bottle|pouring liquid|jar|bubble tea|"
             "drink|(?<!delicious )food|cup with straw|watermelon|shortcake|clinking glasses"),
    ("animal", "monkey|gorilla|orangutan|dog|poodle|wolf|fox|raccoon|cat|lion|tiger|leopard|horse|unicorn|zebra|"
               "(?<!button )mouse(?! trap)|deer|bison|cow|ox|buffalo|pig|boar|ram|sheep|goat|camel|llama|giraffe|"
               "elephant|mammoth|rhinoceros|hippopotamus|rat|hamster|rabbit|chipmunk|beaver|hedgehog|bat|"
               "(?<!teddy )bear|koala|panda|sloth|otter|skunk|kangaroo|badger|paw prints|turkey|chicken|rooster|"
               "chick|bird|penguin|dove|eagle|duck|swan|owl|dodo|feather|flamingo|peacock|parrot|frog|crocodile|"
               "turtle|lizard|snake|(?<!red )dragon|sauropod|t-rex|whale|dolphin|seal|fish|blowfish|octopus|shell|"
               "coral|snail|butterfly|bug|ant|honeybee|beetle|cricket(?! bat)|cockroach|spider|scorpion|mosquito|"
               "fly|worm|microbe|jellyfish|goose|moose|donkey|(?<!with )wing|orca|shark|crab|lobster|shrimp|squid|"
               "hairy creature"),
    ("nature", "tree|seedling|herb|shamrock|leaf|cactus|flower|blossom|rose|tulip|sunflower|hibiscus|hyacinth|"
               "bouquet|potted|sun|moon|star(?! of| and)|comet|cloud|snowflake|snowman|fog|wind|rainbow|umbrella|"
               "droplet|water wave|lotus|fire(?! engine| extinguisher)|high voltage|globe|planet|thermometer|"
               "cyclone|milky way|crescent|nest|rock|wood|splatter|landslide|volcano|mountain|mount fuji|desert"),
    ("person", "man|woman|men|women|person|children|baby(?! chick| bottle)|adult|kiss(?! mark)|prince|princess|"
               "father christmas|breast-feeding|water polo|handball|stick figure|red hair|curly hair|white hair|"
               "bald|mother christmas|bride|guardsman|police officer|ninja|mage|fairy|vampire|merperson|elf|genie|"
               "zombie|troll|sleuth|worker|juggling|surfer|swimmer|bicyclist|pedestrian|runner|dancer|golfer|"
               "skier|snowboarder|rowboat|wrestlers|fencer|weight lifter|horse racing|bath|superhero|supervillain|"
               "silhouette|haircut|massage|face palm|shrug|ballet"),
    ("face", "(?<!clock )face(?! massage)|skull|ghost|alien|pile of poo|ogre|goblin|kiss mark|imp|"
             "rolling on the floor laughing"),
    ("body", "hand|thumbs|fist|palm|nail polish|ear|nose|eye|tongue|mouth|lip|leg|foot|brain|anatomical|lung|"
             "tooth|bone|selfie|handshake|skin tone|fingerprint|(?<!card )index|sign of the horns|flexed|pinched|"
             "mechanical arm|footprints"),
    ("travel", "rocket|train|bus|car|automobile|taxi|truck|lorry|tractor|bicycle|scooter|ship|boat|ferry|sailboat|"
               "canoe|airplane|helicopter|railway|tram|metro|station|monorail|fuel|traffic|construction sign|"
               "anchor|seat|satellite|parachute|ambulance|fire engine|rickshaw|wheel(?! of)|roller skate|house|"
               "building|hotel|castle|tower|church|mosque|synagogue|temple|shrine|kaaba|hut|office|hospital|bank|"
               "school|store|factory|stadium|bridge|fountain|tent|camping|park|map|compass|statue of liberty|"
               "moyai|wedding|sunrise|cityscape|foggy|barber pole|roller coaster|hourglass|watch|clock|stopwatch|"
               "luggage|bellhop|motorway|oil drum|brick|wheelchair|vehicle|speedboat|aerial|ring buoy|"
               "flying saucer|steam locomotive|minibus|trolleybus|motorcycle|light rail|hot springs|"
               "place of worship"),
    ("activity", "ball|football|baseball|softball|basketball|volleyball|bowling|hockey|badminton|boxing|"
                 "martial arts|goal|ice skate|diving mask|running shirt|ski|sled|curling|direct hit|yo-yo|kite|"
                 "billiards|magic wand|video game|joystick|slot machine|game die|jigsaw|teddy bear|pinata|"
                 "spade suit|heart suit|diamond suit|club suit|chess|mahjong|playing card|performing arts|"
                 "artist palette|thread|sewing|knot|medal|trophy|ticket|fireworks|firecracker|sparkler|balloon|"
                 "party|pine decoration|dolls|carp streamer|ribbon|present|gift|jack-o-lantern|musical|microphone|"
                 "headphone|saxophone|guitar|violin|trumpet|drum|banjo|accordion|maracas|flute|harp|trombone|"
                 "boomerang|bow and arrow|skateboard|flying disc"),
    ("symbol", "sign|symbol|arrow|keycap|circle|circled|square|squared|triangle|diamond|heart|button|mark|letter|"
               "aries|taurus|gemini|cancer|leo|virgo|libra|scorpius|sagittarius|capricorn|aquarius|pisces|"
               "ophiuchus|cross|yin yang|wheel of dharma|fleur-de-lis|trident|copyright|asterisk|sparkle|"
               "star of david|menorah|khanda|curly loop|currency|minus|multiplication|ballot|vibration|restroom|"
               "passport|baggage|rectangle|hexagon|pentagon|octagon|anger|dash|hole|speech|teller machine|fisheye|"
               "double vertical bar|ellipse|staff of aesculapius|no|customs|information source"),
]}
_RULE_ORDER = ("face", "person", "food", "animal", "nature", "travel", "body", "activity", "symbol")


def emoji_class(caption: str) -> int:
    """Coarse group (index into ``EMOJI_CLASSES``) from keywords of the caption, first matching rule wins:
    flags and OpenMoji extras first, then people (captions that start with man/woman/person/..., or carry a
    skin tone; hands and other body parts among them go to "body"), then the keyword rules in ``_RULE_ORDER``;
    "object" otherwise."""
    words = caption.split(":")[0]
    if caption.startswith("flag") or re.search(r"\bflags?\b", words):
        return EMOJI_CLASSES.index("flag")
    if caption.startswith("openmoji extra"):
        return EMOJI_CLASSES.index("extra")
    first = words.split(" ")[0]
    if first in ("man", "woman", "person", "people", "adult", "boy", "girl", "child", "family", "couple",
                 "older") or ("skin tone" in caption and ":" in caption):
        body = _EMOJI_RULES["body"].search(words) and not _EMOJI_RULES["person"].search(words)
        return EMOJI_CLASSES.index("body" if body else "person")
    for name in _RULE_ORDER:
        if _EMOJI_RULES[name].search(words) and not (name == "face" and _EMOJI_RULES["animal"].search(words)):
            return EMOJI_CLASSES.index(name)
    return EMOJI_CLASSES.index("object")
