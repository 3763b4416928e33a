"""A fixed, embedded English word list for needle keys, word values and common-words extraction.

RULER draws these from the ``wonderwords`` package; embedding a few hundred common words keeps the
tasks offline and reproducible without it. Only lowercase alphabetic words of 4 to 10 letters.
"""

from __future__ import annotations

import functools


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ADJECTIVES: tuple[str, ...] = _split(
    """
    able absent active afraid agile alert alive ancient angry annual anxious awake aware basic bitter
    blank blind bold brave brief bright brisk broad broken busy calm careful casual cheap cheerful
    chilly clean clever close cloudy coastal cold common complex cosmic crazy crisp cruel curious
    damp daring dark deep dense direct distant dizzy double dusty eager early easy elegant empty
    entire equal exact exotic faint fair famous fancy fast fierce final firm flat fluffy foggy fond
    formal fragile free fresh friendly frozen funny gentle giant glad global golden grand grateful
    great greedy green gross guilty happy hardy harsh healthy heavy helpful hidden hollow honest
    huge humble hungry ironic ideal idle immense inner jolly joyful junior keen kind large lazy legal
    light little lively lonely long loose loud lovely loyal lucky magic major mellow merry mighty
    mild minor modern modest moral narrow nasty native neat nervous noble noisy normal oval orange
    ordinary outer pale patient perfect plain pleasant polite poor popular precious pretty private
    proud purple quick quiet rapid rare ready real regular rich rigid ripe rough round royal rural
    rusty sacred salty scarce secret serious shallow sharp shiny short silent silly simple sincere
    sleepy slim slow small smart smooth snowy social soft solid sour spare spicy splendid steady
    steep sticky stormy strange strict strong sudden sunny super sweet swift tall tame tender tense
    thick thin tidy tiny tough tricky tropical true ugly unique upper urban useful vacant vague
    valid vast violet vital vivid warm weak wealthy weary wicked wide wild windy wise witty wooden
    yellow young zealous
    """
)
"""About 250 common English adjectives."""

NOUNS: tuple[str, ...] = _split(
    """
    acorn actor adult airport album anchor angle animal ankle apple apron arrow artist atlas author
    autumn avenue badge bakery ball balloon banana bank barrel basket beach beard bell bicycle
    blanket bottle bread breeze brick bridge brush bucket buffalo butter button cabin cable cactus
    camera camel candle canoe canyon captain carpet carrot castle cattle ceiling cellar chair chalk
    cheetah cherry chicken chimney circle citizen cliff clock cloud coast coffee collar comet copper
    cottage cotton cousin cradle crayon cricket crystal cupboard curtain cushion dancer desert diamond
    dinner doctor dolphin donkey dragon drawer dream drum eagle elbow engine eraser falcon farmer
    feather fence ferry finger flag flame flower forest fossil fountain ferret frog galaxy garden
    garlic giraffe glacier glove goat grape guitar hammer harbor harvest helmet hermit highway hill
    honey horizon horse hotel island ivory jacket jaguar jelly jewel journal jungle kettle kitchen
    kitten ladder lagoon lantern lemon leopard letter library lily lion lizard lobster magnet
    mango maple marble market meadow melon mirror monkey moon morning mountain mouse museum needle
    nephew nest night notebook ocean office olive onion orchard orchid otter ostrich oyster paddle
    painter palace panda paper parrot pearl pebble pencil penguin pepper piano pigeon pillow pilot
    planet pocket pond potato puppet puzzle quarry rabbit radio rainbow raven record ribbon river
    robin rocket saddle sailor salmon sandal saucer scarf school scissors sheep shelf shore
    shovel signal silver singer sister sketch sled slipper snail socket soldier spider spoon
    squirrel stable statue stove stream street sugar summer sunset swan sweater table teacher
    temple tent thunder ticket tiger tomato tower tractor train trumpet tulip tunnel turtle
    umbrella valley vase velvet village violin volcano wagon walnut wallet walrus water whale
    wheel whistle window winter wizard wolf yacht zebra
    """
)
"""About 280 common English nouns."""

VERBS: tuple[str, ...] = _split(
    """
    accept admire allow answer arrange arrive attach bake balance begin believe borrow breathe
    build calculate carry celebrate change chase climb collect compare complain count cover crawl
    create dance decide deliver describe design discover divide drift earn embrace enjoy escape
    examine explain explore fasten finish float follow forgive gather glide grow guard guess hurry
    imagine improve invent invite juggle kneel knock laugh launch learn listen measure melt mention
    multiply notice observe obtain offer paint pause perform permit plant polish pour practice
    prepare protect pull punish question reach recall reflect relax remember repair replace rescue
    return scatter scribble search select settle shiver smile sneeze solve sparkle
    squeeze stitch stretch suggest support surround swim target thank travel trust unlock vanish
    wander whisper wonder wrestle yawn
    """
)
"""About 120 common English verbs (none shared with :data:`NOUNS`)."""


@functools.cache
def common_words_vocabulary() -> tuple[str, ...]:
    """Distinct words of :data:`NOUNS`, :data:`ADJECTIVES` and :data:`VERBS`, sorted.

    Words contained in another word of the list (``"lily"`` in ``"lilypad"``) are dropped so that a
    substring match (``string_match_all``) cannot credit a word that was not produced.
    """
    words = sorted(set(NOUNS) | set(ADJECTIVES) | set(VERBS))
    return tuple(w for w in words if not any(w != other and w in other for other in words))


@functools.cache
def key_vocabulary() -> tuple[str, ...]:
    """Needle keys and word values as ``"adjective-noun"`` pairs (RULER's format), sorted."""
    return tuple(f"{adj}-{noun}" for adj in sorted(set(ADJECTIVES)) for noun in sorted(set(NOUNS)))
