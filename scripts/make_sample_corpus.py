#!/usr/bin/env python3
"""Generate the small built-in sample corpus in `zer02llm/sample_data/`.

The corpus lets `python -m zer02llm.train` run with no arguments on a fresh clone. Every document
is produced here from templates and word lists written for this project, so the text is original
and free to use under the project's licence. 60% of the documents are English and 40% are
Simplified Chinese (languages are dealt in shuffled blocks of three English and two Chinese). The files use minimind's pretrain format: one JSON object per line,
`{"text": "..."}`, UTF-8, with non-ASCII characters written as they are (not escaped).

The output depends only on `--seed` (and the sizes). The training and validation files are drawn
from separate random streams, and a validation document that also appears in the training file
is left out, so the two files share no document.

It also writes a small supervised fine-tuning (SFT) sample, `sft.jsonl` and `sft_val.jsonl`, in
minimind's SFT format: one `{"conversations": [{"role": ..., "content": ...}, ...]}` per line.
The conversations ask about the same little world (sums, word problems, shopping, legs, colours,
days and months, animal facts, counting, short stories), with the same 60/40 language split;
about 70% have one question, 20% a follow-up too, and 10% start with a system prompt. They come
from two more random streams of their own (so adding them did not change the pretraining files),
share no conversation, and are checked after writing: the format, and every sum, leg count, day,
month, count and colour mix in the answers, recomputed from the text.

    python scripts/make_sample_corpus.py                 # the shipped files (seed 0)
    python scripts/make_sample_corpus.py --train-kb 50 --val-kb 5 --sft-kb 12 --sft-val-kb 2 --out-dir /tmp/tiny

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Callable

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_DIR / "zer02llm" / "sample_data"
LANGUAGE_BLOCK = ["en", "en", "en", "zh", "zh"]  # dealt in shuffled blocks: 60% English, 40% Chinese
MIN_SENTENCES, MAX_SENTENCES = 2, 8

# --------------------------------------------------------------------------------------------
# Word lists. Each entry carries its English and Chinese forms so that both languages draw on
# the same small world (the same animals, places, colours and days).
# --------------------------------------------------------------------------------------------

EN_NAMES = [
    ("Tom", "m"), ("Anna", "f"), ("Lily", "f"), ("Sam", "m"), ("Ben", "m"), ("Mia", "f"),
    ("Leo", "m"), ("Emma", "f"), ("Max", "m"), ("Zoe", "f"), ("Jack", "m"), ("Nora", "f"),
    ("Omar", "m"), ("Ruby", "f"), ("Finn", "m"), ("Ivy", "f"), ("Hugo", "m"), ("Lucy", "f"),
    ("Ravi", "m"), ("Mei", "f"), ("Oscar", "m"), ("Grace", "f"), ("Noah", "m"), ("Ella", "f"),
    ("Adam", "m"), ("Sara", "f"), ("Luke", "m"), ("Rosa", "f"), ("Kai", "m"), ("Hana", "f"),
]
ZH_NAMES = [
    ("小明", "m"), ("小红", "f"), ("小刚", "m"), ("小丽", "f"), ("小华", "m"), ("小芳", "f"),
    ("小龙", "m"), ("小雨", "f"), ("小军", "m"), ("乐乐", "f"), ("明明", "m"), ("小美", "f"),
    ("丁丁", "m"), ("小燕", "f"), ("阿强", "m"), ("小静", "f"), ("小宇", "m"), ("小兰", "f"),
    ("小杰", "m"), ("小月", "f"), ("小东", "m"), ("小梅", "f"), ("小林", "m"), ("小雪", "f"),
]
EN_PRONOUNS = {"m": ("he", "him", "his"), "f": ("she", "her", "her")}
ZH_PRONOUNS = {"m": "他", "f": "她"}

# key: (English, Chinese)
COLOURS = {
    "red": ("red", "红色"), "blue": ("blue", "蓝色"), "green": ("green", "绿色"),
    "yellow": ("yellow", "黄色"), "white": ("white", "白色"), "black": ("black", "黑色"),
    "brown": ("brown", "棕色"), "orange": ("orange", "橙色"), "purple": ("purple", "紫色"),
    "pink": ("pink", "粉色"), "grey": ("grey", "灰色"),
}

# Animals: English singular and plural, number of legs (None: left out of leg sums), what it
# does when it makes a sound and when it leaves, the colours it plausibly has, and the Chinese
# name, measure word, sound and leaving phrases.
ANIMALS = {
    "dog": dict(en="dog", en_pl="dogs", legs=4, en_sound="barked happily", en_away="ran away",
                colours=["brown", "black", "white", "yellow", "grey"],
                zh="狗", mw="只", zh_sound="汪汪地叫了起来", zh_away="跑开了"),
    "cat": dict(en="cat", en_pl="cats", legs=4, en_sound="meowed softly", en_away="ran away",
                colours=["black", "white", "grey", "orange", "brown"],
                zh="猫", mw="只", zh_sound="喵喵地叫了起来", zh_away="跑开了"),
    "rabbit": dict(en="rabbit", en_pl="rabbits", legs=4, en_sound=None, en_away="hopped away",
                   colours=["white", "brown", "grey"],
                   zh="兔子", mw="只", zh_sound=None, zh_away="蹦蹦跳跳地跑开了"),
    "duck": dict(en="duck", en_pl="ducks", legs=2, en_sound="quacked loudly", en_away="waddled away",
                 colours=["white", "yellow", "brown"],
                 zh="鸭子", mw="只", zh_sound="嘎嘎地叫了起来", zh_away="摇摇摆摆地走开了"),
    "bird": dict(en="bird", en_pl="birds", legs=2, en_sound="sang a short song", en_away="flew away",
                 colours=["blue", "red", "yellow", "green", "brown"],
                 zh="鸟", mw="只", zh_sound="叽叽喳喳地唱起了歌", zh_away="飞走了"),
    "owl": dict(en="owl", en_pl="owls", legs=2, en_sound="hooted twice", en_away="flew away",
                colours=["brown", "grey", "white"],
                zh="猫头鹰", mw="只", zh_sound="咕咕地叫了两声", zh_away="飞走了"),
    "frog": dict(en="frog", en_pl="frogs", legs=4, en_sound="croaked", en_away="jumped into the water",
                 colours=["green", "brown"],
                 zh="青蛙", mw="只", zh_sound="呱呱地叫了起来", zh_away="跳进了水里"),
    "turtle": dict(en="turtle", en_pl="turtles", legs=4, en_sound=None, en_away="walked slowly away",
                   colours=["green", "brown"],
                   zh="乌龟", mw="只", zh_sound=None, zh_away="慢慢地爬走了"),
    "squirrel": dict(en="squirrel", en_pl="squirrels", legs=4, en_sound="chattered", en_away="ran up a tree",
                     colours=["red", "grey", "brown"],
                     zh="松鼠", mw="只", zh_sound="吱吱地叫了起来", zh_away="爬到了树上"),
    "fox": dict(en="fox", en_pl="foxes", legs=4, en_sound=None, en_away="ran into the bushes",
                colours=["red", "orange"],
                zh="狐狸", mw="只", zh_sound=None, zh_away="钻进了树丛里"),
    "deer": dict(en="deer", en_pl="deer", legs=4, en_sound=None, en_away="ran into the trees",
                 colours=["brown"],
                 zh="鹿", mw="只", zh_sound=None, zh_away="跑进了树林"),
    "cow": dict(en="cow", en_pl="cows", legs=4, en_sound="mooed", en_away="walked away",
                colours=["brown", "black", "white"],
                zh="牛", mw="头", zh_sound="哞哞地叫了起来", zh_away="慢慢地走开了"),
    "horse": dict(en="horse", en_pl="horses", legs=4, en_sound="neighed", en_away="trotted away",
                  colours=["brown", "black", "white", "grey"],
                  zh="马", mw="匹", zh_sound="发出了一声长长的嘶鸣", zh_away="跑开了"),
    "sheep": dict(en="sheep", en_pl="sheep", legs=4, en_sound="said baa", en_away="walked away",
                  colours=["white", "black"],
                  zh="羊", mw="只", zh_sound="咩咩地叫了起来", zh_away="走开了"),
    "goat": dict(en="goat", en_pl="goats", legs=4, en_sound="bleated", en_away="walked away",
                 colours=["white", "brown", "black"],
                 zh="山羊", mw="只", zh_sound="咩咩地叫了起来", zh_away="走开了"),
    "pig": dict(en="pig", en_pl="pigs", legs=4, en_sound="grunted", en_away="ran away",
                colours=["pink"],
                zh="猪", mw="头", zh_sound="哼哼地叫了起来", zh_away="跑开了"),
    "hen": dict(en="hen", en_pl="hens", legs=2, en_sound="clucked", en_away="ran away",
                colours=["brown", "white", "black"],
                zh="母鸡", mw="只", zh_sound="咯咯地叫了起来", zh_away="跑开了"),
    "mouse": dict(en="mouse", en_pl="mice", legs=4, en_sound="squeaked", en_away="ran into a small hole",
                  colours=["grey", "brown", "white"],
                  zh="老鼠", mw="只", zh_sound="吱吱地叫了起来", zh_away="钻进了一个小洞"),
    "crab": dict(en="crab", en_pl="crabs", legs=None, en_sound=None, en_away="ran sideways into the sea",
                 colours=["red", "orange", "brown"],
                 zh="螃蟹", mw="只", zh_sound=None, zh_away="横着爬进了海里"),
}
FARM_ANIMALS = ["cow", "horse", "sheep", "goat", "pig", "hen", "duck", "dog", "cat"]

# Outdoor places for the stories: how one gets there, where an animal can be, which animals fit.
PLACES = {
    "park": dict(en_go="went to the park", zh_go="去了公园",
                 en_spots=["under a big tree", "behind a bench", "near the pond", "on the grass"],
                 zh_spots=["一棵大树下", "长椅后面", "池塘边", "草地上"],
                 animals=["dog", "cat", "duck", "bird", "squirrel", "rabbit", "frog"]),
    "garden": dict(en_go="went out into the garden", zh_go="来到了花园里",
                   en_spots=["among the flowers", "under a bush", "next to the fence",
                             "beside the vegetable beds"],
                   zh_spots=["花丛中", "灌木下面", "篱笆旁边", "菜地旁边"],
                   animals=["cat", "bird", "rabbit", "frog", "hen", "squirrel", "mouse", "turtle", "dog"]),
    "forest": dict(en_go="walked into the forest", zh_go="走进了森林",
                   en_spots=["behind a tall tree", "near a small stream", "under some ferns",
                             "on a fallen log"],
                   zh_spots=["一棵高高的树后面", "小溪边", "蕨草下面", "一根倒下的木头上"],
                   animals=["fox", "owl", "squirrel", "deer", "rabbit", "bird", "frog"]),
    "beach": dict(en_go="went to the beach", zh_go="去了海边",
                  en_spots=["near the water", "behind a sandcastle", "next to a big rock",
                            "under an old boat"],
                  zh_spots=["水边", "沙堡后面", "一块大石头旁边", "一条旧船下面"],
                  animals=["crab", "dog", "bird", "turtle"]),
    "farm": dict(en_go="visited the farm", zh_go="去了农场",
                 en_spots=["in the barn", "next to the fence", "near the hay", "by the gate"],
                 zh_spots=["谷仓里", "栅栏旁边", "干草堆旁边", "大门口"],
                 animals=FARM_ANIMALS),
    "river": dict(en_go="walked down to the river", zh_go="来到了河边",
                  en_spots=["near the water", "under a bridge", "on a flat stone", "among the reeds"],
                  zh_spots=["水边", "桥下", "一块平平的石头上", "芦苇丛中"],
                  animals=["duck", "frog", "turtle", "bird"]),
    "hill": dict(en_go="climbed the hill", zh_go="爬上了小山",
                 en_spots=["at the top of the hill", "behind a rock", "in the long grass"],
                 zh_spots=["山顶上", "一块石头后面", "长长的草丛里"],
                 animals=["goat", "sheep", "rabbit", "bird", "fox", "deer"]),
}

# Weather: English adjective, story details, Chinese details, Chinese diary phrase and diary label.
WEATHER = {
    "sunny": dict(en="sunny", en_details=["The sun was bright and the sky was blue.",
                                          "It was warm, and there were no clouds in the sky."],
                  zh_details=["天气很好，阳光明媚。", "天空很蓝，一朵云也没有。"],
                  zh_diary="天气晴朗", zh_label="晴"),
    "rainy": dict(en="rainy", en_details=["It was raining, so {p} took {poss} umbrella.",
                                          "A light rain was falling."],
                  zh_details=["外面下着小雨，{p}带上了雨伞。", "细细的小雨不停地下着。"],
                  zh_diary="外面一直在下雨", zh_label="雨"),
    "windy": dict(en="windy", en_details=["The wind was strong, and leaves were flying through the air.",
                                          "The wind blew {poss} hat off twice."],
                  zh_details=["风很大，树叶在空中飞舞。", "风把{p}的帽子吹掉了两次。"],
                  zh_diary="风很大", zh_label="大风"),
    "cloudy": dict(en="cloudy", en_details=["Grey clouds covered the sky.",
                                            "The sky was grey, but it did not rain."],
                   zh_details=["天上有很多灰色的云。", "天阴阴的，但是没有下雨。"],
                   zh_diary="天阴沉沉的", zh_label="阴"),
    "snowy": dict(en="snowy", en_details=["Snow covered the ground like a white blanket.",
                                          "{P} wore a warm coat and a scarf."],
                  zh_details=["地上积了一层厚厚的雪。", "{p}穿上了暖和的外套，戴上了围巾。"],
                  zh_diary="外面下着雪", zh_label="雪"),
    "foggy": dict(en="foggy", en_details=["The fog was so thick that {p} could not see very far.",
                                          "Everything was hidden in a soft white fog."],
                  zh_details=["雾很大，{p}看不清远处的东西。", "到处都是白白的雾。"],
                  zh_diary="早上有很大的雾", zh_label="雾"),
}

EN_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ZH_DAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
EN_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
             "September", "October", "November", "December"]
TIMES = [("morning", "早上"), ("afternoon", "下午"), ("evening", "傍晚")]
RELATIVES = [("mother", "妈妈"), ("father", "爸爸"), ("grandmother", "奶奶"),
             ("grandfather", "爷爷"), ("sister", "姐姐"), ("brother", "哥哥")]
ENCOUNTER_FEELINGS = [("happy", "很开心"), ("excited", "很兴奋"), ("surprised", "很惊讶"),
                      ("curious", "很好奇"), ("delighted", "非常高兴")]

# Things a person can own, with Chinese measure words.
OBJECTS = [("hat", "顶", "帽子"), ("ball", "个", "皮球"), ("kite", "只", "风筝"),
           ("bicycle", "辆", "自行车"), ("umbrella", "把", "雨伞"), ("cup", "个", "杯子"),
           ("scarf", "条", "围巾"), ("bag", "个", "书包"), ("pencil", "支", "铅笔"),
           ("box", "个", "盒子"), ("coat", "件", "外套"), ("lamp", "盏", "台灯")]

# Countable foods: English singular, plural, Chinese measure word, Chinese name.
FOODS = [("apple", "apples", "个", "苹果"), ("pear", "pears", "个", "梨"),
         ("orange", "oranges", "个", "橙子"), ("egg", "eggs", "个", "鸡蛋"),
         ("banana", "bananas", "根", "香蕉"), ("carrot", "carrots", "根", "胡萝卜"),
         ("cucumber", "cucumbers", "根", "黄瓜"), ("cookie", "cookies", "块", "饼干"),
         ("peach", "peaches", "个", "桃子"), ("lemon", "lemons", "个", "柠檬"),
         ("watermelon", "watermelons", "个", "西瓜")]
# Countable things that are given away rather than eaten.
THINGS = [("pencil", "pencils", "支", "铅笔"), ("sticker", "stickers", "张", "贴纸"),
          ("marble", "marbles", "颗", "弹珠"), ("book", "books", "本", "书"),
          ("balloon", "balloons", "个", "气球"), ("stamp", "stamps", "张", "邮票")]

# Activities: English past tense, English base form, Chinese past, Chinese plain form.
SOLO_ACTIVITIES = [
    ("read a book about {animal_pl}", "read a book about {animal_pl}",
     "看了一本关于{zh_animal}的书", "看一本关于{zh_animal}的书"),
    ("drew a picture of {a_animal}", "draw a picture of {a_animal}",
     "画了一幅{zh_animal}的画", "画一幅{zh_animal}的画"),
    ("baked cookies with my mother", "bake cookies with my mother",
     "和妈妈一起做了饼干", "和妈妈一起做饼干"),
    ("cleaned my room", "clean my room", "打扫了自己的房间", "打扫房间"),
    ("visited my grandmother", "visit my grandmother", "去看了奶奶", "去看奶奶"),
    ("wrote a letter to my uncle", "write a letter to my uncle", "给叔叔写了一封信", "给叔叔写信"),
    ("watered the flowers", "water the flowers", "给花浇了水", "给花浇水"),
    ("helped my father cook dinner", "help my father cook dinner", "帮爸爸做了晚饭", "帮爸爸做晚饭"),
    ("practised the piano", "practise the piano", "练习了弹钢琴", "练习弹钢琴"),
    ("made a paper boat", "make a paper boat", "折了一只纸船", "折一只纸船"),
]
SHARED_ACTIVITIES = [
    ("played football", "play football", "踢了足球", "踢足球"),
    ("flew a kite", "fly a kite", "放了风筝", "放风筝"),
    ("went for a bicycle ride", "go for a bicycle ride", "骑了自行车", "骑自行车"),
    ("went swimming", "go swimming", "去游了泳", "去游泳"),
    ("sang songs", "sing songs", "唱了几首歌", "唱歌"),
    ("built a tower of blocks", "build a tower of blocks", "用积木搭了一座高塔", "用积木搭高塔"),
    ("played hide and seek", "play hide and seek", "玩了捉迷藏", "玩捉迷藏"),
    ("looked for shells on the beach", "look for shells on the beach", "去海边捡了贝壳", "去海边捡贝壳"),
]
# Weekly habits: English third person present, Chinese.
HABITS = [("goes to the library", "去图书馆看书"), ("visits {poss} grandmother", "去看奶奶"),
          ("helps {poss} father in the garden", "帮爸爸在花园里干活"), ("plays football", "踢足球"),
          ("goes swimming", "去游泳"), ("bakes bread with {poss} mother", "和妈妈一起做面包"),
          ("has a piano lesson", "去上钢琴课"), ("cleans {poss} room", "打扫自己的房间")]

# Facts that are true, in both languages.
COLOUR_FACTS = [
    ("On a clear day, the sky is blue.", "晴天的时候，天空是蓝色的。"),
    ("Grass is green.", "草是绿色的。"), ("Snow is white.", "雪是白色的。"),
    ("Ripe bananas are yellow.", "熟了的香蕉是黄色的。"),
    ("Strawberries are red.", "草莓是红色的。"), ("Coal is black.", "煤是黑色的。"),
    ("Carrots are orange.", "胡萝卜是橙色的。"), ("Chocolate is brown.", "巧克力是棕色的。"),
    ("Some grapes are green and some are purple.", "葡萄有绿色的，也有紫色的。"),
    ("Lemons are yellow.", "柠檬是黄色的。"), ("Most leaves are green in summer.", "夏天，大多数树叶是绿色的。"),
    ("Many leaves turn yellow or red in autumn.", "秋天，很多树叶会变成黄色或红色。"),
]
COLOUR_MIXES = [
    ("Blue and yellow make green.", "蓝色和黄色混在一起会变成绿色。"),
    ("Red and yellow make orange.", "红色和黄色混在一起会变成橙色。"),
    ("Red and blue make purple.", "红色和蓝色混在一起会变成紫色。"),
    ("Red and white make pink.", "红色和白色混在一起会变成粉色。"),
    ("Black and white make grey.", "黑色和白色混在一起会变成灰色。"),
]
ANIMAL_FACTS = [
    ("A dog says woof.", "小狗汪汪叫。"), ("A cat says meow.", "小猫喵喵叫。"),
    ("A cow says moo.", "牛哞哞叫。"), ("A duck says quack.", "鸭子嘎嘎叫。"),
    ("A sheep says baa.", "小羊咩咩叫。"), ("Birds can fly.", "鸟会飞。"),
    ("Fish can swim.", "鱼会游泳。"), ("Frogs can jump very far.", "青蛙能跳得很远。"),
    ("Ducks can swim and fly.", "鸭子会游泳，也会飞。"), ("A spider has eight legs.", "蜘蛛有八条腿。"),
    ("An insect has six legs.", "昆虫有六条腿。"), ("A bird has two legs and two wings.", "鸟有两条腿和两只翅膀。"),
    ("Bees make honey.", "蜜蜂会酿蜂蜜。"), ("Cows give us milk.", "奶牛给我们提供牛奶。"),
    ("Hens lay eggs.", "母鸡会下蛋。"), ("Rabbits like to eat carrots.", "兔子喜欢吃胡萝卜。"),
    ("Owls are awake at night.", "猫头鹰在夜里活动。"), ("A turtle carries its shell on its back.", "乌龟背着自己的壳。"),
    ("Squirrels hide nuts for the winter.", "松鼠会把坚果藏起来过冬。"),
    ("Fish live in water.", "鱼生活在水里。"),
]

# Dialogue destinations: English place, English reason, Chinese place, Chinese reason.
DESTINATIONS = [
    ("the library", "I want to borrow a book about {animal_pl}.", "图书馆", "我想借一本关于{zh_animal}的书"),
    ("the market", "I need to buy some {food_pl}.", "市场", "我要去买一些{zh_food}"),
    ("the park", "I want to fly my {colour} kite.", "公园", "我想去放我的{zh_colour}风筝"),
    ("the beach", "I want to look for shells.", "海边", "我想去捡贝壳"),
    ("the river", "I want to watch the ducks.", "河边", "我想去看鸭子"),
    ("school", "I want to ask my teacher a question.", "学校", "我想去问老师一个问题"),
    ("the farm", "I am going to help my uncle feed the {farm_pl}.", "农场", "我要去帮叔叔喂{zh_farm}"),
]
COUNTING_SCENES = [  # animal, English location, Chinese location
    ("duck", "in the pond", "池塘里"), ("bird", "on the roof", "屋顶上"),
    ("sheep", "in the field", "草地上"), ("cow", "in the field", "草地上"),
    ("hen", "in the yard", "院子里"), ("rabbit", "in the garden", "花园里"),
    ("frog", "by the pond", "池塘边"), ("goat", "on the hill", "山坡上"),
]

EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
           "eighteen", "nineteen"]
EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ZH_DIGITS = "零一二三四五六七八九"


# --------------------------------------------------------------------------------------------
# Small language helpers.
# --------------------------------------------------------------------------------------------

def en_num(n: int) -> str:
    """English words for 0..100."""
    if n < 20:
        return EN_ONES[n]
    if n == 100:
        return "one hundred"
    tens, ones = divmod(n, 10)
    return EN_TENS[tens] + ("-" + EN_ONES[ones] if ones else "")


def zh_num(n: int) -> str:
    """Chinese numerals for 0..100, as used in arithmetic (2 is 二)."""
    if n < 10:
        return ZH_DIGITS[n]
    if n == 100:
        return "一百"
    tens, ones = divmod(n, 10)
    head = "十" if tens == 1 else ZH_DIGITS[tens] + "十"
    return head + (ZH_DIGITS[ones] if ones else "")


def zh_count(n: int) -> str:
    """Chinese numerals before a measure word: 2 is 两 (两只), 12 stays 十二."""
    return "两" if n == 2 else zh_num(n)


def a_an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def en_count(n: int, singular: str, plural: str) -> str:
    return f"{en_num(n)} {singular if n == 1 else plural}"


class Doc:
    """A document built sentence by sentence, in paragraphs; counts its sentences."""

    def __init__(self, lang: str):
        self.sep = " " if lang == "en" else ""
        self.paragraphs: list[list[str]] = [[]]
        self.sentences = 0

    def s(self, *sentences: str) -> None:
        for sentence in sentences:
            self.paragraphs[-1].append(sentence)
            self.sentences += 1

    def line(self, text: str) -> None:
        """A line that is not counted as a sentence (a diary heading), on its own."""
        self.new_paragraph()
        self.paragraphs[-1].append(text)
        self.new_paragraph()

    def new_paragraph(self) -> None:
        if self.paragraphs[-1]:
            self.paragraphs.append([])

    def text(self) -> str:
        return "\n".join(self.sep.join(p) for p in self.paragraphs if p)


def pick_person(rng: random.Random, lang: str, exclude: str | None = None) -> tuple[str, str]:
    names = EN_NAMES if lang == "en" else ZH_NAMES
    while True:
        name, gender = rng.choice(names)
        if name != exclude:
            return name, gender


def pick_animal(rng: random.Random, keys: list[str] | None = None) -> tuple[dict, str, str]:
    key = rng.choice(keys or list(ANIMALS))
    animal = ANIMALS[key]
    return animal, key, rng.choice(animal["colours"])


# --------------------------------------------------------------------------------------------
# Document types. Each has an English and a Chinese generator with the same shape.
# --------------------------------------------------------------------------------------------

def en_story(rng: random.Random) -> Doc:
    d = Doc("en")
    name, g = pick_person(rng, "en")
    p, obj, poss = EN_PRONOUNS[g]
    place = PLACES[rng.choice(list(PLACES))]
    animal, _, colour = pick_animal(rng, place["animals"])
    weather = WEATHER[rng.choice(list(WEATHER))]
    time_en = rng.choice(TIMES)[0]
    if rng.random() < 0.5:
        d.s(f"On {rng.choice(EN_DAYS)} {time_en}, {name} {place['en_go']}.")
    else:
        d.s(f"One {weather['en']} {time_en}, {name} {place['en_go']}.")
    d.s(rng.choice(weather["en_details"]).format(p=p, P=cap(p), poss=poss))
    size = rng.choice(["little", "big", "small", "young"])
    a = animal["en"]
    d.s(f"{cap(p)} saw {a_an(size)} {COLOURS[colour][0]} {a} {rng.choice(place['en_spots'])}.")
    if rng.random() < 0.6:
        doing = rng.choice(["sleeping", "looking around", "eating something", "sitting very still",
                            f"watching {name}"])
        d.s(f"The {a} was {doing}.")
    if rng.random() < 0.6:
        d.s(f"{name} felt {rng.choice(ENCOUNTER_FEELINGS)[0]}.")
    endings = [f"{cap(p)} sat down quietly and watched the {a} for a long time.",
               f"When {p} came closer, the {a} {animal['en_away']}.",
               f"{cap(p)} drew a picture of the {a} in {poss} notebook."]
    if animal["en_sound"]:
        endings.append(f"{cap(p)} said hello, and the {a} {animal['en_sound']}.")
    d.s(rng.choice(endings))
    if rng.random() < 0.5:
        d.new_paragraph()
        rel = rng.choice(RELATIVES)[0]
        d.s(f"When {name} got home, {p} told {poss} {rel} about the {COLOURS[colour][0]} {a}.")
        more = [f"{cap(poss)} {rel} smiled and said, \"What a lovely day you had!\"",
                f"That night, {name} dreamed about the {a}.",
                f"{name} hoped to see the {a} again soon."]
        if d.sentences < MAX_SENTENCES:
            d.s(rng.choice(more))
    return d


def zh_story(rng: random.Random) -> Doc:
    d = Doc("zh")
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    place = PLACES[rng.choice(list(PLACES))]
    animal, _, colour = pick_animal(rng, place["animals"])
    weather = WEATHER[rng.choice(list(WEATHER))]
    time_zh = rng.choice(TIMES)[1]
    d.s(f"{rng.choice(ZH_DAYS)}{time_zh}，{name}{place['zh_go']}。")
    d.s(rng.choice(weather["zh_details"]).format(p=p))
    size = rng.choice(["小", "大"])
    a = size + animal["zh"]
    mw = animal["mw"]
    d.s(f"{p}在{rng.choice(place['zh_spots'])}看见了一{mw}{COLOURS[colour][1]}的{a}。")
    if rng.random() < 0.6:
        doing = rng.choice(["正在睡觉", "正在东张西望", "正在吃东西", "一动不动地待着", f"正看着{name}"])
        d.s(f"{a}{doing}。")
    if rng.random() < 0.6:
        d.s(f"{name}觉得{rng.choice(ENCOUNTER_FEELINGS)[1]}。")
    endings = [f"{p}安静地坐下来，看了{a}很久。",
               f"{p}走近的时候，{a}{animal['zh_away']}。",
               f"{p}在本子上画了一幅{a}的画。"]
    if animal["zh_sound"]:
        endings.append(f"{p}跟{a}打了个招呼，{a}{animal['zh_sound']}。")
    d.s(rng.choice(endings))
    if rng.random() < 0.5:
        d.new_paragraph()
        rel = rng.choice(RELATIVES)[1]
        d.s(f"回到家以后，{name}把看见{a}的事告诉了{rel}。")
        more = [f"{rel}笑着说：“你今天过得真开心！”",
                f"那天晚上，{name}梦见了那{mw}{a}。",
                f"{name}希望很快能再见到那{mw}{a}。"]
        d.s(rng.choice(more))
    return d


def _en_fact(rng: random.Random, words: bool) -> str:
    op = rng.choice(["plus", "minus", "times"])
    if op == "plus":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        c = a + b
    elif op == "minus":
        a = rng.randint(2, 30)
        b = rng.randint(1, a)
        c = a - b
    else:
        a, b = rng.randint(2, 10), rng.randint(2, 10)
        c = a * b
    fmt = en_num if words else str
    verb = rng.choice(["is", "equals"])
    return cap(f"{fmt(a)} {op} {fmt(b)} {verb} {fmt(c)}.")


def _zh_fact(rng: random.Random, hanzi: bool) -> str:
    op = rng.choice(["加", "减", "乘以"])
    if op == "加":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        c = a + b
    elif op == "减":
        a = rng.randint(2, 30)
        b = rng.randint(1, a)
        c = a - b
    else:
        a, b = rng.randint(2, 10), rng.randint(2, 10)
        c = a * b
    fmt = zh_num if hanzi else str
    return f"{fmt(a)}{op}{fmt(b)}等于{fmt(c)}。"


def _en_word_problem(rng: random.Random, d: Doc) -> None:
    name, g = pick_person(rng, "en")
    p, obj, poss = EN_PRONOUNS[g]
    food = rng.random() < 0.5
    sing, plur, _, _ = rng.choice(FOODS if food else THINGS)
    kind = rng.choice(["less", "more", "share"])
    if kind == "less":
        a = rng.randint(3, 15)
        b = rng.randint(1, a - 1)
        if food and rng.random() < 0.5:
            act = f"ate {en_num(b)} of them"
        else:
            act = f"gave {en_num(b)} of them to {pick_person(rng, 'en', name)[0]}"
        d.s(f"{name} had {en_count(a, sing, plur)}.")
        d.s(f"{cap(p)} {act}.")
        d.s(f"Now {p} has {en_count(a - b, sing, plur)} left.")
    elif kind == "more":
        a, b = rng.randint(1, 12), rng.randint(1, 8)
        rel = rng.choice(RELATIVES)[0]
        d.s(f"{name} had {en_count(a, sing, plur)}.")
        d.s(f"{cap(poss)} {rel} gave {obj} {en_num(b)} more.")
        d.s(f"Now {p} has {en_count(a + b, sing, plur)}.")
    else:
        each, k = rng.randint(1, 5), rng.randint(2, 5)
        among = "between" if k == 2 else "among"
        d.s(f"{name} has {en_count(each * k, sing, plur)} and wants to share them equally {among} "
            f"{en_num(k)} friends.")
        d.s(f"Each friend gets {en_count(each, sing, plur)}.")


def _zh_word_problem(rng: random.Random, d: Doc) -> None:
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    food = rng.random() < 0.5
    _, _, mw, item = rng.choice(FOODS if food else THINGS)
    kind = rng.choice(["less", "more", "share"])
    if kind == "less":
        a = rng.randint(3, 15)
        b = rng.randint(1, a - 1)
        if food and rng.random() < 0.5:
            act = f"吃了{zh_count(b)}{mw}"
        else:
            act = f"送给了{pick_person(rng, 'zh', name)[0]}{zh_count(b)}{mw}"
        d.s(f"{name}有{zh_count(a)}{mw}{item}，{p}{act}，还剩下{zh_count(a - b)}{mw}{item}。")
    elif kind == "more":
        a, b = rng.randint(1, 12), rng.randint(1, 8)
        rel = rng.choice(RELATIVES)[1]
        d.s(f"{name}有{zh_count(a)}{mw}{item}。")
        d.s(f"{rel}又给了{p}{zh_count(b)}{mw}，现在{p}一共有{zh_count(a + b)}{mw}{item}。")
    else:
        each, k = rng.randint(1, 5), rng.randint(2, 5)
        d.s(f"{name}有{zh_count(each * k)}{mw}{item}，{p}想平均分给{zh_count(k)}个朋友。")
        d.s(f"每个朋友可以分到{zh_count(each)}{mw}{item}。")


def en_math(rng: random.Random) -> Doc:
    d = Doc("en")
    if rng.random() < 0.4:
        d.s(rng.choice(["Here are some sums.", "Let us practise some arithmetic.",
                        "Numbers are fun to learn."]))
    words = rng.random() < 0.4
    for _ in range(rng.randint(2, 4)):
        d.s(_en_fact(rng, words))
    if rng.random() < 0.6:
        d.new_paragraph()
        _en_word_problem(rng, d)
    return d


def zh_math(rng: random.Random) -> Doc:
    d = Doc("zh")
    if rng.random() < 0.4:
        d.s(rng.choice(["我们来做几道算术题。", "下面是一些简单的算术。", "学数字很有意思。"]))
    hanzi = rng.random() < 0.5
    for _ in range(rng.randint(2, 4)):
        d.s(_zh_fact(rng, hanzi))
    if rng.random() < 0.6:
        d.new_paragraph()
        _zh_word_problem(rng, d)
    return d


def en_legs(rng: random.Random) -> Doc:
    d = Doc("en")
    name, g = pick_person(rng, "en")
    p = EN_PRONOUNS[g][0]
    k1, k2 = rng.sample([k for k in FARM_ANIMALS if ANIMALS[k]["legs"]], 2)
    a1, a2 = ANIMALS[k1], ANIMALS[k2]
    n1, n2 = rng.randint(2, 9), rng.randint(2, 9)
    l1, l2 = n1 * a1["legs"], n2 * a2["legs"]
    d.s(f"{name} visited the farm and saw {en_count(n1, a1['en'], a1['en_pl'])} and "
        f"{en_count(n2, a2['en'], a2['en_pl'])}.")
    d.s(f"Each {a1['en']} has {en_num(a1['legs'])} legs, and each {a2['en']} has {en_num(a2['legs'])} legs.")
    d.s(f"The {a1['en_pl']} have {l1} legs in total, and the {a2['en_pl']} have {l2}.")
    d.s(f"Together, that makes {l1 + l2} legs.")
    if rng.random() < 0.4:
        d.s(f"{cap(p)} counted them twice to be sure.")
    return d


def zh_legs(rng: random.Random) -> Doc:
    d = Doc("zh")
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    k1, k2 = rng.sample([k for k in FARM_ANIMALS if ANIMALS[k]["legs"]], 2)
    a1, a2 = ANIMALS[k1], ANIMALS[k2]
    n1, n2 = rng.randint(2, 9), rng.randint(2, 9)
    l1, l2 = n1 * a1["legs"], n2 * a2["legs"]
    d.s(f"{name}去了农场，看见了{zh_count(n1)}{a1['mw']}{a1['zh']}和{zh_count(n2)}{a2['mw']}{a2['zh']}。")
    d.s(f"每{a1['mw']}{a1['zh']}有{zh_count(a1['legs'])}条腿，每{a2['mw']}{a2['zh']}有{zh_count(a2['legs'])}条腿。")
    d.s(f"{a1['zh']}一共有{zh_num(l1)}条腿，{a2['zh']}一共有{zh_num(l2)}条腿。")
    d.s(f"加起来一共是{zh_num(l1 + l2)}条腿。")
    if rng.random() < 0.4:
        d.s(f"为了不数错，{p}又数了一遍。")
    return d


def en_counting(rng: random.Random) -> Doc:
    d = Doc("en")
    name, g = pick_person(rng, "en")
    key, loc_en, _ = rng.choice(COUNTING_SCENES)
    a = ANIMALS[key]
    n = rng.randint(2, 8)
    extra = rng.randint(1, 4)
    d.s(f"{name} counted the {a['en_pl']} {loc_en}.")
    d.s(cap(", ".join(en_num(i) for i in range(1, n + 1))) + ".")
    d.s(f"There were {en_count(n, a['en'], a['en_pl'])}.")
    if rng.random() < 0.7:
        d.s(f"Then {en_num(extra)} more {a['en'] if extra == 1 else a['en_pl']} came, "
            f"so there were {en_count(n + extra, a['en'], a['en_pl'])}.")
    return d


def zh_counting(rng: random.Random) -> Doc:
    d = Doc("zh")
    name, g = pick_person(rng, "zh")
    key, _, loc_zh = rng.choice(COUNTING_SCENES)
    a = ANIMALS[key]
    n = rng.randint(2, 8)
    extra = rng.randint(1, 4)
    d.s(f"{name}数了数{loc_zh}的{a['zh']}：" + "、".join(zh_num(i) for i in range(1, n + 1)) + "。")
    d.s(f"一共有{zh_count(n)}{a['mw']}{a['zh']}。")
    if rng.random() < 0.7:
        d.s(f"后来又来了{zh_count(extra)}{a['mw']}，现在有{zh_count(n + extra)}{a['mw']}{a['zh']}了。")
    return d


def en_calendar(rng: random.Random) -> Doc:
    d = Doc("en")
    i = rng.randrange(7)
    day = lambda k: EN_DAYS[(i + k) % 7]  # noqa: E731
    pool = [f"Yesterday was {day(-1)}, and tomorrow will be {day(1)}.",
            f"The day after tomorrow will be {day(2)}.",
            "There are seven days in a week.",
            f"{day(0)} comes after {day(-1)} and before {day(1)}.",
            "Saturday and Sunday are the weekend."]
    name, g = pick_person(rng, "en")
    poss = EN_PRONOUNS[g][2]
    habit = rng.choice(HABITS)[0].format(poss=poss)
    pool.append(f"On {day(0)}s, {name} usually {habit}.")
    m = rng.randrange(12)
    pool.append(f"There are twelve months in a year, and {EN_MONTHS[m]} comes after {EN_MONTHS[m - 1]}.")
    d.s(f"Today is {day(0)}.")
    for sentence in rng.sample(pool, rng.randint(2, 5)):
        d.s(sentence)
    return d


def zh_calendar(rng: random.Random) -> Doc:
    d = Doc("zh")
    i = rng.randrange(7)
    day = lambda k: ZH_DAYS[(i + k) % 7]  # noqa: E731
    pool = [f"昨天是{day(-1)}，明天是{day(1)}。",
            f"后天是{day(2)}。",
            "一个星期有七天。",
            f"{day(-1)}过后是{day(0)}，{day(0)}过后是{day(1)}。",
            "星期六和星期日是周末。"]
    name, _ = pick_person(rng, "zh")
    pool.append(f"每个{day(0)}，{name}都会{rng.choice(HABITS)[1]}。")
    m = rng.randrange(12)
    prev = (m - 1) % 12
    pool.append(f"一年有十二个月，{zh_num(prev + 1)}月过后是{zh_num(m + 1)}月。")
    d.s(f"今天是{day(0)}。")
    for sentence in rng.sample(pool, rng.randint(2, 5)):
        d.s(sentence)
    return d


def en_colours(rng: random.Random) -> Doc:
    d = Doc("en")
    facts = rng.sample(COLOUR_FACTS, 4)
    for en, _ in facts[:rng.randint(1, 3)]:
        d.s(en)
    if rng.random() < 0.6:
        d.s(rng.choice(COLOUR_MIXES)[0])
    if rng.random() < 0.7:
        name, g = pick_person(rng, "en")
        p = EN_PRONOUNS[g][0]
        c1, c2 = rng.sample(list(COLOURS), 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        d.s(f"{name}'s favourite colour is {c1}.")
        d.s(f"{cap(p)} has {a_an(COLOURS[c1][0])} {o1[0]} and {a_an(COLOURS[c2][0])} {o2[0]}.")
    if d.sentences < MIN_SENTENCES:
        d.s(facts[3][0] if rng.random() < 0.5 else "There are many colours in the world.")
    return d


def zh_colours(rng: random.Random) -> Doc:
    d = Doc("zh")
    facts = rng.sample(COLOUR_FACTS, 4)
    for _, zh in facts[:rng.randint(1, 3)]:
        d.s(zh)
    if rng.random() < 0.6:
        d.s(rng.choice(COLOUR_MIXES)[1])
    if rng.random() < 0.7:
        name, g = pick_person(rng, "zh")
        p = ZH_PRONOUNS[g]
        c1, c2 = rng.sample(list(COLOURS), 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        d.s(f"{name}最喜欢的颜色是{COLOURS[c1][1]}。")
        d.s(f"{p}有一{o1[1]}{COLOURS[c1][1]}的{o1[2]}和一{o2[1]}{COLOURS[c2][1]}的{o2[2]}。")
    if d.sentences < MIN_SENTENCES:
        d.s(facts[3][1] if rng.random() < 0.5 else "世界上有很多种颜色。")
    return d


def en_animal_facts(rng: random.Random) -> Doc:
    d = Doc("en")
    if rng.random() < 0.4:
        d.s(rng.choice(["Here are some facts about animals.", "Animals are interesting."]))
    for en, _ in rng.sample(ANIMAL_FACTS, rng.randint(2, 5)):
        d.s(en)
    return d


def zh_animal_facts(rng: random.Random) -> Doc:
    d = Doc("zh")
    if rng.random() < 0.4:
        d.s(rng.choice(["下面是一些关于动物的知识。", "动物真有趣。"]))
    for _, zh in rng.sample(ANIMAL_FACTS, rng.randint(2, 5)):
        d.s(zh)
    return d


def en_shopping(rng: random.Random) -> Doc:
    d = Doc("en")
    name, g = pick_person(rng, "en")
    p = EN_PRONOUNS[g][0]
    (s1, pl1, _, _), (s2, pl2, _, _) = rng.sample(FOODS, 2)
    n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
    c1, c2 = rng.randint(1, 5), rng.randint(1, 5)
    d.s(f"At the market, {name} bought {en_num(n1)} {pl1} and {en_num(n2)} {pl2}.")
    d.s(f"Each {s1} cost {en_count(c1, 'coin', 'coins')}, and each {s2} cost {en_count(c2, 'coin', 'coins')}.")
    d.s(f"So {p} paid {en_count(n1 * c1, 'coin', 'coins')} for the {pl1} and "
        f"{en_count(n2 * c2, 'coin', 'coins')} for the {pl2}.")
    d.s(f"Altogether, {p} paid {en_count(n1 * c1 + n2 * c2, 'coin', 'coins')}.")
    return d


def zh_shopping(rng: random.Random) -> Doc:
    d = Doc("zh")
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    (_, _, m1, f1), (_, _, m2, f2) = rng.sample(FOODS, 2)
    n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
    c1, c2 = rng.randint(1, 5), rng.randint(1, 5)
    d.s(f"{name}在市场上买了{zh_count(n1)}{m1}{f1}和{zh_count(n2)}{m2}{f2}。")
    d.s(f"每{m1}{f1}{zh_count(c1)}元，每{m2}{f2}{zh_count(c2)}元。")
    d.s(f"买{f1}花了{zh_count(n1 * c1)}元，买{f2}花了{zh_count(n2 * c2)}元。")
    d.s(f"{p}一共花了{zh_count(n1 * c1 + n2 * c2)}元。")
    return d


def _fill(rng: random.Random, template: str) -> str:
    animal = ANIMALS[rng.choice(list(ANIMALS))]
    farm = ANIMALS[rng.choice(FARM_ANIMALS)]
    food = rng.choice(FOODS)
    colour = COLOURS[rng.choice(list(COLOURS))]
    return template.format(a_animal=a_an(animal["en"]), animal_pl=animal["en_pl"], zh_animal=animal["zh"], food_pl=food[1],
                           zh_food=food[3], colour=colour[0], zh_colour=colour[1],
                           farm_pl=farm["en_pl"], zh_farm=farm["zh"])


def en_dialogue(rng: random.Random) -> Doc:
    d = Doc("en")
    n1, _ = pick_person(rng, "en")
    n2, _ = pick_person(rng, "en", n1)
    place, reason, _, _ = rng.choice(DESTINATIONS)
    d.s(f"\"Where are you going, {n2}?\" asked {n1}.")
    d.new_paragraph()
    d.s(f"\"I am going to {place},\" said {n2}.", f"\"{_fill(rng, reason)}\"")
    d.new_paragraph()
    d.s(f"\"Can I come with you?\" asked {n1}.")
    d.new_paragraph()
    if rng.random() < 0.7:
        d.s(f"\"Of course,\" said {n2}.", "\"Let's go together.\"")
    else:
        chore = rng.choice(SOLO_ACTIVITIES)[1]
        d.s(f"\"Not today,\" said {n2}.", f"\"I have to {_fill(rng, chore)} this afternoon.\"")
        d.new_paragraph()
        d.s(f"\"Maybe next time, then,\" said {n1}.")
    return d


def zh_dialogue(rng: random.Random) -> Doc:
    d = Doc("zh")
    n1, _ = pick_person(rng, "zh")
    n2, _ = pick_person(rng, "zh", n1)
    _, _, place, reason = rng.choice(DESTINATIONS)
    d.s(f"“{n2}，你要去哪里？”{n1}问。")
    d.new_paragraph()
    d.s(f"“我要去{place}，”{n2}说，“{_fill(rng, reason)}。”")
    d.new_paragraph()
    d.s(f"“我可以和你一起去吗？”{n1}问。")
    d.new_paragraph()
    if rng.random() < 0.7:
        d.s(f"“当然可以！”{n2}笑着说，“我们一起走吧。”")
    else:
        chore = rng.choice(SOLO_ACTIVITIES)[3]
        d.s(f"“今天不行，”{n2}说，“今天下午我要{_fill(rng, chore)}。”")
        d.new_paragraph()
        d.s(f"“那我们下次再一起去吧。”{n1}说。")
    return d


def _diary_date(rng: random.Random) -> tuple[dict, int, int]:
    """Weather, month (1..12) and day of month for a diary entry; snow only from November to March."""
    key = rng.choice(list(WEATHER))
    month = rng.choice([11, 12, 1, 2, 3] if key == "snowy" else range(1, 13))
    return WEATHER[key], month, rng.randint(1, 28)


def en_diary(rng: random.Random) -> Doc:
    d = Doc("en")
    i = rng.randrange(7)
    weather, month, mday = _diary_date(rng)
    friend, _ = pick_person(rng, "en")
    solo = rng.choice(SOLO_ACTIVITIES)
    shared, later = rng.sample(SHARED_ACTIVITIES, 2)
    d.line("Dear diary,")
    d.s(f"Today was {EN_DAYS[i]}, {mday} {EN_MONTHS[month - 1]}, "
        f"and the weather was {weather['en']}.")
    d.s(f"In the morning, I {_fill(rng, solo[0])}.")
    d.s(rng.choice([f"In the afternoon, I {shared[0]} with {friend}.",
                    f"In the afternoon, {friend} and I {shared[0]}."]))
    d.s(rng.choice(["It was a good day, and I felt happy.", "I was tired but happy.",
                    "I felt proud of myself.", "I laughed a lot today."]))
    if rng.random() < 0.7:
        d.s(f"Tomorrow is {EN_DAYS[(i + 1) % 7]}, and I want to {later[1]} with my friends.")
    return d


def zh_diary(rng: random.Random) -> Doc:
    d = Doc("zh")
    i = rng.randrange(7)
    weather, month, mday = _diary_date(rng)
    friend, _ = pick_person(rng, "zh")
    solo = rng.choice(SOLO_ACTIVITIES)
    shared, later = rng.sample(SHARED_ACTIVITIES, 2)
    d.line(f"{month}月{mday}日　{ZH_DAYS[i]}　{weather['zh_label']}")
    d.s(f"今天{weather['zh_diary']}。")
    d.s(f"上午，我{_fill(rng, solo[2])}。")
    d.s(f"下午，我和{friend}一起{shared[2]}。")
    d.s(rng.choice(["今天过得很好，我很开心。", "我有点累，但是很高兴。", "我为自己感到骄傲。",
                    "今天我笑了很多次。"]))
    if rng.random() < 0.7:
        d.s(f"明天是{ZH_DAYS[(i + 1) % 7]}，我想和朋友们一起{later[3]}。")
    return d


# (weight, English generator, Chinese generator)
DOC_TYPES: list[tuple[float, Callable[[random.Random], Doc], Callable[[random.Random], Doc]]] = [
    (30, en_story, zh_story),
    (12, en_math, zh_math),
    (6, en_legs, zh_legs),
    (6, en_counting, zh_counting),
    (9, en_calendar, zh_calendar),
    (8, en_colours, zh_colours),
    (7, en_animal_facts, zh_animal_facts),
    (7, en_shopping, zh_shopping),
    (8, en_dialogue, zh_dialogue),
    (7, en_diary, zh_diary),
]


def make_document(rng: random.Random, lang: str) -> str:
    """The text of one document in `lang` ("en" or "zh")."""
    weights = [w for w, _, _ in DOC_TYPES]
    _, en_gen, zh_gen = rng.choices(DOC_TYPES, weights=weights)[0]
    doc = (en_gen if lang == "en" else zh_gen)(rng)
    if not MIN_SENTENCES <= doc.sentences <= MAX_SENTENCES:
        raise AssertionError(f"{doc.sentences} sentences in {doc.text()!r}")
    return doc.text()


def write_corpus(path: Path, rng: random.Random, target_bytes: int, avoid: set[str]) -> dict:
    """Write documents until the file reaches about target_bytes; skip any text in `avoid`.

    Adds every written text to `avoid`, so a later call shares no document with this one.
    """
    size = lines = skipped = 0
    per_lang = {"en": 0, "zh": 0}
    languages: list[str] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        while size < target_bytes:
            if not languages:
                languages = LANGUAGE_BLOCK[:]
                rng.shuffle(languages)
            lang = languages.pop()
            text = make_document(rng, lang)
            while text in avoid:  # draw again in the same language
                skipped += 1
                text = make_document(rng, lang)
            avoid.add(text)
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            lines += 1
            per_lang[lang] += 1
    return dict(path=path, bytes=size, lines=lines, skipped_duplicates=skipped, **per_lang)


# ============================================================================================
# Supervised fine-tuning (SFT) sample: short conversations about the same little world, so that
# a model pretrained on the documents above can learn to answer questions about them.
#
# A topic generator returns two (question, answer) pairs: a question that stands on its own and a
# follow-up about the same topic. A single-turn conversation keeps only the first pair.
# ============================================================================================

QA = tuple[str, str]
SFT_SHAPES = ["single"] * 7 + ["two"] * 2 + ["system"]  # dealt in shuffled blocks of ten
SFT_SYSTEM_FOLLOW_UP = 0.25  # share of the system-prompt conversations that also have a follow-up
SFT_ROLES = ("system", "user", "assistant")
SYSTEM_PROMPTS = {
    "en": ["You are a helpful assistant.",
           "You are a friendly assistant. Give short and correct answers.",
           "You are a patient teacher for young children.",
           "Answer every question in one or two short sentences."],
    "zh": ["你是一个乐于助人的助手。",
           "你是一个友好的助手，回答要简短、准确。",
           "你是一位耐心的小学老师。",
           "请用一两句话回答每个问题。"],
}

# Animals whose legs can be asked about: English singular and plural, legs, Chinese name and
# measure word. The story animals with a leg count, plus two that the animal facts mention.
LEG_ANIMALS = {k: (a["en"], a["en_pl"], a["legs"], a["zh"], a["mw"]) for k, a in ANIMALS.items() if a["legs"]}
LEG_ANIMALS.update({"spider": ("spider", "spiders", 8, "蜘蛛", "只"), "bee": ("bee", "bees", 6, "蜜蜂", "只")})
FARM_LEG_ANIMALS = [k for k in FARM_ANIMALS if ANIMALS[k]["legs"]]
FLYING_ANIMALS = ["bird", "owl", "duck"]

# Where a story happened, for the follow-up "Where did ... see the ...?"
EN_PLACE_NAMES = {"park": "in the park", "garden": "in the garden", "forest": "in the forest",
                  "beach": "at the beach", "farm": "on the farm", "river": "by the river",
                  "hill": "on the hill"}
ZH_PLACE_NAMES = {"park": "公园", "garden": "花园", "forest": "森林", "beach": "海边", "farm": "农场",
                  "river": "河边", "hill": "小山"}

# Questions about colours, with answers that repeat the corpus's colour facts.
COLOUR_QA = [
    ("What colour is the sky on a clear day?", "On a clear day, the sky is blue.",
     "晴天的时候，天空是什么颜色的？", "晴天的时候，天空是蓝色的。"),
    ("What colour is grass?", "Grass is green.", "草是什么颜色的？", "草是绿色的。"),
    ("What colour is snow?", "Snow is white.", "雪是什么颜色的？", "雪是白色的。"),
    ("What colour is a ripe banana?", "A ripe banana is yellow.", "熟了的香蕉是什么颜色的？", "熟了的香蕉是黄色的。"),
    ("What colour are strawberries?", "Strawberries are red.", "草莓是什么颜色的？", "草莓是红色的。"),
    ("What colour is coal?", "Coal is black.", "煤是什么颜色的？", "煤是黑色的。"),
    ("What colour are carrots?", "Carrots are orange.", "胡萝卜是什么颜色的？", "胡萝卜是橙色的。"),
    ("What colour is chocolate?", "Chocolate is brown.", "巧克力是什么颜色的？", "巧克力是棕色的。"),
    ("What colour are grapes?", "Some grapes are green and some are purple.",
     "葡萄是什么颜色的？", "葡萄有绿色的，也有紫色的。"),
    ("What colour are lemons?", "Lemons are yellow.", "柠檬是什么颜色的？", "柠檬是黄色的。"),
    ("What colour are most leaves in summer?", "Most leaves are green in summer.",
     "夏天，大多数树叶是什么颜色的？", "夏天，大多数树叶是绿色的。"),
    ("What colour do leaves turn in autumn?", "Many leaves turn yellow or red in autumn.",
     "秋天，树叶会变成什么颜色？", "秋天，很多树叶会变成黄色或红色。"),
]
# Colour mixing: the two colours and the result (keys of COLOURS).
COLOUR_MIX_KEYS = [("blue", "yellow", "green"), ("red", "yellow", "orange"), ("red", "blue", "purple"),
                   ("red", "white", "pink"), ("black", "white", "grey")]

# Animal facts as questions: (group, English question, English answer, Chinese question, Chinese answer).
ANIMAL_QA = [
    ("sound", "What does a dog say?", "A dog says woof.", "小狗怎么叫？", "小狗汪汪叫。"),
    ("sound", "What does a cat say?", "A cat says meow.", "小猫怎么叫？", "小猫喵喵叫。"),
    ("sound", "What sound does a cow make?", "A cow says moo.", "牛是怎么叫的？", "牛哞哞叫。"),
    ("sound", "What sound does a duck make?", "A duck says quack.", "鸭子是怎么叫的？", "鸭子嘎嘎叫。"),
    ("sound", "What does a sheep say?", "A sheep says baa.", "小羊怎么叫？", "小羊咩咩叫。"),
    ("can", "Can birds fly?", "Yes, birds can fly.", "鸟会飞吗？", "会，鸟会飞。"),
    ("can", "Can fish swim?", "Yes, fish can swim. They live in water.", "鱼会游泳吗？", "会，鱼会游泳，它们生活在水里。"),
    ("can", "Can ducks swim?", "Yes, ducks can swim, and they can fly too.", "鸭子会游泳吗？", "会，鸭子会游泳，也会飞。"),
    ("can", "Can frogs jump?", "Yes, frogs can jump very far.", "青蛙会跳吗？", "会，青蛙能跳得很远。"),
    ("can", "Can a turtle fly?", "No, a turtle cannot fly. It walks slowly and carries its shell on its back.",
     "乌龟会飞吗？", "不会，乌龟不会飞。它爬得很慢，背着自己的壳。"),
    ("can", "Can a pig fly?", "No, pigs cannot fly.", "猪会飞吗？", "不会，猪不会飞。"),
    ("can", "Can a cow fly?", "No, cows cannot fly. They walk on four legs.", "牛会飞吗？", "不会，牛不会飞，它用四条腿走路。"),
    ("what", "What do hens lay?", "Hens lay eggs.", "母鸡会下什么？", "母鸡会下蛋。"),
    ("what", "What do cows give us?", "Cows give us milk.", "奶牛给我们提供什么？", "奶牛给我们提供牛奶。"),
    ("what", "What do bees make?", "Bees make honey.", "蜜蜂会酿什么？", "蜜蜂会酿蜂蜜。"),
    ("what", "What do rabbits like to eat?", "Rabbits like to eat carrots.", "兔子喜欢吃什么？", "兔子喜欢吃胡萝卜。"),
    ("what", "When are owls awake?", "Owls are awake at night.", "猫头鹰什么时候活动？", "猫头鹰在夜里活动。"),
    ("what", "What do squirrels do with nuts?", "Squirrels hide nuts for the winter.",
     "松鼠会怎样处理坚果？", "松鼠会把坚果藏起来过冬。"),
    ("what", "Where do fish live?", "Fish live in water.", "鱼生活在哪里？", "鱼生活在水里。"),
    ("what", "What does a turtle carry on its back?", "A turtle carries its shell on its back.",
     "乌龟背上背着什么？", "乌龟背着自己的壳。"),
]

GREETINGS = [  # (English question, English answer, Chinese question, Chinese answer)
    ("Hello!", "Hello! How can I help you today?", "你好！", "你好！有什么可以帮你的吗？"),
    ("Good morning!", "Good morning! What would you like to know?", "早上好！", "早上好！你想知道什么呢？"),
    ("Who are you?", "I am a small assistant. I can answer simple questions about numbers, colours, days and animals.",
     "你是谁？", "我是一个小助手，可以回答关于数字、颜色、星期和动物的简单问题。"),
    ("What can you do?", "I can do simple sums, tell you about animals and colours, and tell short stories.",
     "你会做什么？", "我会做简单的算术，讲讲动物和颜色，还会讲小故事。"),
]
THANKS = [("Thank you!", "You are welcome!", "谢谢你！", "不客气！"),
          ("Thanks a lot.", "You are welcome. Have a nice day!", "非常感谢。", "不用谢，祝你今天开心！")]

OPS = {"+": ("plus", "加"), "-": ("minus", "减"), "*": ("times", "乘以"), "/": ("divided by", "除以")}


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def _sum(rng: random.Random) -> tuple[int, str, int]:
    """An arithmetic question in the corpus's ranges: a + b, a - b (not negative) or a * b."""
    op = rng.choice("+-*")
    if op == "+":
        return rng.randint(1, 20), op, rng.randint(1, 20)
    if op == "-":
        a = rng.randint(2, 30)
        return a, op, rng.randint(1, a)
    return rng.randint(2, 10), op, rng.randint(2, 10)


def _next_step(rng: random.Random, c: int) -> tuple[str, int]:
    """A second step on the result c: add or take away a small number (never below zero, never over 100)."""
    if c >= 2 and (rng.random() < 0.5 or c > 91):
        return "-", rng.randint(1, min(c, 9))
    return "+", rng.randint(1, 9)


def _en_eq(a: int, op: str, b: int, fmt: Callable[[int], str]) -> str:
    return f"{fmt(a)} {OPS[op][0]} {fmt(b)} is {fmt(_apply(a, op, b))}"


def _zh_eq(a: int, op: str, b: int, fmt: Callable[[int], str]) -> str:
    return f"{fmt(a)}{OPS[op][1]}{fmt(b)}等于{fmt(_apply(a, op, b))}"


def sft_en_arithmetic(rng: random.Random) -> list[QA]:
    fmt = en_num if rng.random() < 0.35 else str
    a, op, b = _sum(rng)
    c = _apply(a, op, b)
    expr = f"{fmt(a)} {OPS[op][0]} {fmt(b)}"
    q = rng.choice([f"What is {expr}?", f"What is {expr}?", f"How much is {expr}?",
                    f"Can you tell me what {expr} is?", f"What does {expr} equal?"])
    verb = "equals" if q.startswith("What does") else "is"
    first = (q, cap(f"{expr} {verb} {fmt(c)}."))
    other_ops = [o for o in "+-*" if o != op and (o != "-" or a >= b) and (o != "*" or a * b <= 100)]
    if rng.random() < 0.5 or not other_ops:
        op2, d = _next_step(rng, c)
        follow = (rng.choice([f"And what is that {OPS[op2][0]} {fmt(d)}?",
                              f"Now {'add' if op2 == '+' else 'take away'} {fmt(d)}. What do you get?"]),
                  cap(f"{_en_eq(c, op2, d, fmt)}."))
    else:
        op2 = rng.choice(other_ops)
        follow = (f"What about {fmt(a)} {OPS[op2][0]} {fmt(b)}?", cap(f"{_en_eq(a, op2, b, fmt)}."))
    return [first, follow]


def sft_zh_arithmetic(rng: random.Random) -> list[QA]:
    fmt = zh_num if rng.random() < 0.35 else str
    a, op, b = _sum(rng)
    expr = f"{fmt(a)}{OPS[op][1]}{fmt(b)}"
    q = rng.choice([f"{expr}等于多少？", f"{expr}等于几？", f"{expr}是多少？", f"请问{expr}等于多少？",
                    f"你知道{expr}等于几吗？"])
    first = (q, f"{_zh_eq(a, op, b, fmt)}。")
    c = _apply(a, op, b)
    other_ops = [o for o in "+-*" if o != op and (o != "-" or a >= b) and (o != "*" or a * b <= 100)]
    if rng.random() < 0.5 or not other_ops:
        op2, d = _next_step(rng, c)
        follow = (f"{'再加上' if op2 == '+' else '再减去'}{fmt(d)}呢？", f"{_zh_eq(c, op2, d, fmt)}。")
    else:
        op2 = rng.choice(other_ops)
        follow = (f"那{fmt(a)}{OPS[op2][1]}{fmt(b)}呢？", f"{_zh_eq(a, op2, b, fmt)}。")
    return [first, follow]


def sft_en_word_problem(rng: random.Random) -> list[QA]:
    name, g = pick_person(rng, "en")
    p, obj, poss = EN_PRONOUNS[g]
    food = rng.random() < 0.5
    sing, plur, _, _ = rng.choice(FOODS if food else THINGS)
    fmt = en_num if rng.random() < 0.7 else str
    cnt = lambda n: f"{fmt(n)} {sing if n == 1 else plur}"  # noqa: E731
    kind = rng.choice(["less", "more", "share"])
    if kind == "less":
        a = rng.randint(3, 15)
        b = rng.randint(1, a - 1)
        if food and rng.random() < 0.5:
            act = f"ate {fmt(b)} of them"
        else:
            act = f"gave {fmt(b)} of them to {pick_person(rng, 'en', name)[0]}"
        q = f"{name} had {cnt(a)}. {cap(p)} {act}. How many {plur} does {p} have now?"
        first = (q, f"{name} has {cnt(a - b)} left, because {_en_eq(a, '-', b, fmt)}.")
        rel = rng.choice(RELATIVES)[0]
        d = rng.randint(1, 8)
        follow = (f"Then {poss} {rel} gives {obj} {fmt(d)} more. How many does {p} have now?",
                  f"Now {p} has {cnt(a - b + d)}, because {_en_eq(a - b, '+', d, fmt)}.")
    elif kind == "more":
        a, b = rng.randint(1, 12), rng.randint(1, 8)
        rel = rng.choice(RELATIVES)[0]
        q = f"{name} had {cnt(a)}. {cap(poss)} {rel} gave {obj} {fmt(b)} more. How many {plur} does {p} have now?"
        first = (q, f"{cap(p)} has {cnt(a + b)} now, because {_en_eq(a, '+', b, fmt)}.")
        d = rng.randint(1, a + b - 1)
        verb = "eats" if food else "gives away"
        follow = (f"If {p} {verb} {fmt(d)} of them, how many are left?",
                  f"{cap(cnt(a + b - d))} {'is' if a + b - d == 1 else 'are'} left, "
                  f"because {_en_eq(a + b, '-', d, fmt)}.")
    else:
        each, k = rng.randint(1, 5), rng.randint(2, 5)
        among = "between" if k == 2 else "among"
        q = (f"{name} has {cnt(each * k)} and wants to share them equally {among} {fmt(k)} friends. "
             f"How many does each friend get?")
        first = (q, f"Each friend gets {cnt(each)}, because {_en_eq(each * k, '/', k, fmt)}.")
        follow = (f"How many {plur} would {p} need to give each friend {fmt(each + 1)}?",
                  f"{cap(p)} would need {cnt(k * (each + 1))}, because {_en_eq(k, '*', each + 1, fmt)}.")
    return [first, follow]


def sft_zh_word_problem(rng: random.Random) -> list[QA]:
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    food = rng.random() < 0.5
    _, _, mw, item = rng.choice(FOODS if food else THINGS)
    hanzi = rng.random() < 0.7
    cnt = zh_count if hanzi else str  # before a measure word
    num = zh_num if hanzi else str  # in an equation
    kind = rng.choice(["less", "more", "share"])
    if kind == "less":
        a = rng.randint(3, 15)
        b = rng.randint(1, a - 1)
        if food and rng.random() < 0.5:
            act = f"吃了{cnt(b)}{mw}"
        else:
            act = f"送给了{pick_person(rng, 'zh', name)[0]}{cnt(b)}{mw}"
        first = (f"{name}有{cnt(a)}{mw}{item}，{p}{act}。{p}还剩下几{mw}{item}？",
                 f"{p}还剩下{cnt(a - b)}{mw}{item}，因为{_zh_eq(a, '-', b, num)}。")
        rel = rng.choice(RELATIVES)[1]
        d = rng.randint(1, 8)
        follow = (f"后来{rel}又给了{p}{cnt(d)}{mw}，现在{p}有几{mw}？",
                  f"现在{p}有{cnt(a - b + d)}{mw}{item}，因为{_zh_eq(a - b, '+', d, num)}。")
    elif kind == "more":
        a, b = rng.randint(1, 12), rng.randint(1, 8)
        rel = rng.choice(RELATIVES)[1]
        first = (f"{name}有{cnt(a)}{mw}{item}，{rel}又给了{p}{cnt(b)}{mw}。现在{p}一共有几{mw}{item}？",
                 f"现在{p}一共有{cnt(a + b)}{mw}{item}，因为{_zh_eq(a, '+', b, num)}。")
        d = rng.randint(1, a + b - 1)
        follow = (f"如果{p}{'吃掉' if food else '送出去'}{cnt(d)}{mw}，还剩几{mw}？",
                  f"还剩{cnt(a + b - d)}{mw}，因为{_zh_eq(a + b, '-', d, num)}。")
    else:
        each, k = rng.randint(1, 5), rng.randint(2, 5)
        first = (f"{name}有{cnt(each * k)}{mw}{item}，想平均分给{cnt(k)}个朋友。每个朋友能分到几{mw}？",
                 f"每个朋友能分到{cnt(each)}{mw}{item}，因为{_zh_eq(each * k, '/', k, num)}。")
        follow = (f"如果每个朋友要分到{cnt(each + 1)}{mw}，一共需要几{mw}{item}？",
                  f"一共需要{cnt(k * (each + 1))}{mw}{item}，因为{_zh_eq(k, '*', each + 1, num)}。")
    return [first, follow]


def _change(total: int) -> int:
    """A note to pay with that is larger than the total."""
    return min(v for v in (5, 10, 20, 50) if v > total)


def sft_en_shopping(rng: random.Random) -> list[QA]:
    (s1, pl1, _, _), (s2, pl2, _, _) = rng.sample(FOODS, 2)
    n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
    c1, c2 = rng.randint(1, 5), rng.randint(1, 5)
    fmt = en_num if rng.random() < 0.5 else str
    coins = lambda n: f"{fmt(n)} {'coin' if n == 1 else 'coins'}"  # noqa: E731
    t1 = n1 * c1
    first = (rng.choice([f"At the market, each {s1} costs {coins(c1)}. How much do {fmt(n1)} {pl1} cost?",
                         f"One {s1} costs {coins(c1)}. How much do I pay for {fmt(n1)} {pl1}?"]),
             f"{cap(fmt(n1))} {pl1} cost {coins(t1)}, because {_en_eq(n1, '*', c1, fmt)}.")
    if rng.random() < 0.5:
        t2 = n2 * c2
        follow = (f"And if I also buy {fmt(n2)} {pl2} at {coins(c2)} each, how much is that altogether?",
                  f"The {pl2} cost {coins(t2)}, so altogether you pay {coins(t1 + t2)}, "
                  f"because {_en_eq(t1, '+', t2, fmt)}.")
    else:
        pay = _change(t1)
        follow = (f"If I pay with {coins(pay)}, how much change do I get?",
                  f"You get {coins(pay - t1)} back, because {_en_eq(pay, '-', t1, fmt)}.")
    return [first, follow]


def sft_zh_shopping(rng: random.Random) -> list[QA]:
    (_, _, m1, f1), (_, _, m2, f2) = rng.sample(FOODS, 2)
    n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
    c1, c2 = rng.randint(1, 5), rng.randint(1, 5)
    hanzi = rng.random() < 0.5
    cnt, num = (zh_count, zh_num) if hanzi else (str, str)
    t1 = n1 * c1
    first = (rng.choice([f"每{m1}{f1}{cnt(c1)}元，买{cnt(n1)}{m1}{f1}要多少钱？",
                         f"在市场上，{f1}{cnt(c1)}元一{m1}。{cnt(n1)}{m1}{f1}一共多少钱？"]),
             f"{cnt(n1)}{m1}{f1}一共{cnt(t1)}元，因为{_zh_eq(n1, '*', c1, num)}。")
    if rng.random() < 0.5:
        t2 = n2 * c2
        follow = (f"如果再买{cnt(n2)}{m2}{f2}，每{m2}{cnt(c2)}元，一共要付多少钱？",
                  f"{f2}要{cnt(t2)}元，所以一共要付{cnt(t1 + t2)}元，因为{_zh_eq(t1, '+', t2, num)}。")
    else:
        pay = _change(t1)
        follow = (f"如果我付{cnt(pay)}元，应该找回多少钱？",
                  f"应该找回{cnt(pay - t1)}元，因为{_zh_eq(pay, '-', t1, num)}。")
    return [first, follow]


def _en_legs_answer(n: int, key: str, fmt: Callable[[int], str]) -> str:
    sing, plur, legs, _, _ = LEG_ANIMALS[key]
    return (f"{cap(fmt(n))} {plur} have {fmt(n * legs)} legs, because each {sing} has {fmt(legs)} legs "
            f"and {_en_eq(n, '*', legs, fmt)}.")


def sft_en_legs(rng: random.Random) -> list[QA]:
    fmt = en_num if rng.random() < 0.6 else str
    kind = rng.choice(["one", "one", "many", "farm"])
    if kind == "farm":
        k1, k2 = rng.sample(FARM_LEG_ANIMALS, 2)
        (s1, p1, l1, _, _), (s2, p2, l2, _, _) = LEG_ANIMALS[k1], LEG_ANIMALS[k2]
        n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
        total = n1 * l1 + n2 * l2
        first = (f"On a farm there are {fmt(n1)} {p1} and {fmt(n2)} {p2}. How many legs are there in total?",
                 f"The {fmt(n1)} {p1} have {fmt(n1 * l1)} legs and the {fmt(n2)} {p2} have {fmt(n2 * l2)} legs. "
                 f"{cap(_en_eq(n1 * l1, '+', n2 * l2, fmt))}, so there are {fmt(total)} legs in total.")
        follow = (f"What if one more {s1} came?",
                  f"Then there would be {fmt(total + l1)} legs, because {_en_eq(total, '+', l1, fmt)}.")
        return [first, follow]
    key = rng.choice(list(LEG_ANIMALS))
    sing, plur, legs, _, _ = LEG_ANIMALS[key]
    n = rng.randint(2, 6)
    one = (rng.choice([f"How many legs does {a_an(sing)} have?", f"How many legs has {a_an(sing)} got?"]),
           f"{cap(a_an(sing))} has {fmt(legs)} legs.")
    many = (f"How many legs do {fmt(n)} {plur} have?", _en_legs_answer(n, key, fmt))
    if kind == "one":
        return [one, (f"And how many legs do {fmt(n)} {plur} have?", _en_legs_answer(n, key, fmt))]
    return [many, (f"How many legs does one {sing} have?", f"One {sing} has {fmt(legs)} legs.")]


def sft_zh_legs(rng: random.Random) -> list[QA]:
    hanzi = rng.random() < 0.7
    cnt, num = (zh_count, zh_num) if hanzi else (str, str)
    kind = rng.choice(["one", "one", "many", "farm"])
    if kind == "farm":
        k1, k2 = rng.sample(FARM_LEG_ANIMALS, 2)
        (_, _, l1, z1, m1), (_, _, l2, z2, m2) = LEG_ANIMALS[k1], LEG_ANIMALS[k2]
        n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
        total = n1 * l1 + n2 * l2
        first = (f"农场里有{cnt(n1)}{m1}{z1}和{cnt(n2)}{m2}{z2}，一共有几条腿？",
                 f"{cnt(n1)}{m1}{z1}有{cnt(n1 * l1)}条腿，{cnt(n2)}{m2}{z2}有{cnt(n2 * l2)}条腿。"
                 f"{_zh_eq(n1 * l1, '+', n2 * l2, num)}，所以一共有{cnt(total)}条腿。")
        follow = (f"如果再来一{m1}{z1}呢？",
                  f"那就一共有{cnt(total + l1)}条腿，因为{_zh_eq(total, '+', l1, num)}。")
        return [first, follow]
    key = rng.choice(list(LEG_ANIMALS))
    _, _, legs, zh, mw = LEG_ANIMALS[key]
    n = rng.randint(2, 6)
    one = (rng.choice([f"一{mw}{zh}有几条腿？", f"{zh}有几条腿？"]), f"一{mw}{zh}有{cnt(legs)}条腿。")
    many_a = (f"{cnt(n)}{mw}{zh}一共有{cnt(n * legs)}条腿，因为每{mw}{zh}有{cnt(legs)}条腿，"
              f"{_zh_eq(n, '*', legs, num)}。")
    if kind == "one":
        return [one, (f"那{cnt(n)}{mw}{zh}一共有几条腿？", many_a)]
    return [(f"{cnt(n)}{mw}{zh}一共有几条腿？", many_a), (f"一{mw}{zh}有几条腿？", f"一{mw}{zh}有{cnt(legs)}条腿。")]


def _list_en(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _list_zh(words: list[str], conj: str) -> str:
    return words[0] if len(words) == 1 else "、".join(words[:-1]) + conj + words[-1]


def _en_animal_colour(key: str) -> str:
    a = ANIMALS[key]
    names = [COLOURS[c][0] for c in a["colours"]]
    if len(names) <= 2:
        return f"{cap(a_an(a['en']))} is usually {_list_en(names)}."
    return f"{cap(a['en_pl'])} can be {_list_en(names)}."


def _zh_animal_colour(key: str) -> str:
    a = ANIMALS[key]
    names = [COLOURS[c][1] for c in a["colours"]]
    if len(names) <= 2:
        return f"{a['zh']}通常是{_list_zh(names, '或')}的。"
    return f"{a['zh']}有{_list_zh(names, '和')}的。"


def sft_en_colours(rng: random.Random) -> list[QA]:
    kind = rng.choice(["animal", "fact", "fact", "mix"])
    if kind == "animal":
        k1, k2 = rng.sample(list(ANIMALS), 2)
        return [(f"What colour is {a_an(ANIMALS[k1]['en'])}?", _en_animal_colour(k1)),
                (f"What about {a_an(ANIMALS[k2]['en'])}?", _en_animal_colour(k2))]
    if kind == "fact":
        (q1, a1, _, _), (q2, a2, _, _) = rng.sample(COLOUR_QA, 2)
        return [(q1, a1), ("And " + q2[0].lower() + q2[1:], a2)]
    (x1, y1, z1), (x2, y2, z2) = rng.sample(COLOUR_MIX_KEYS, 2)
    if rng.random() < 0.5:
        x1, y1 = y1, x1
    return [(rng.choice([f"What colour do you get when you mix {x1} and {y1}?",
                         f"What colour do {x1} and {y1} make?"]), f"{cap(x1)} and {y1} make {z1}."),
            (f"And {x2} and {y2}?", f"{cap(x2)} and {y2} make {z2}.")]


def sft_zh_colours(rng: random.Random) -> list[QA]:
    kind = rng.choice(["animal", "fact", "fact", "mix"])
    if kind == "animal":
        k1, k2 = rng.sample(list(ANIMALS), 2)
        return [(f"{ANIMALS[k1]['zh']}是什么颜色的？", _zh_animal_colour(k1)),
                (f"那{ANIMALS[k2]['zh']}呢？", _zh_animal_colour(k2))]
    if kind == "fact":
        (_, _, q1, a1), (_, _, q2, a2) = rng.sample(COLOUR_QA, 2)
        return [(q1, a1), ("那" + q2, a2)]
    (x1, y1, z1), (x2, y2, z2) = rng.sample(COLOUR_MIX_KEYS, 2)
    if rng.random() < 0.5:
        x1, y1 = y1, x1
    c = lambda k: COLOURS[k][1]  # noqa: E731
    return [(rng.choice([f"{c(x1)}和{c(y1)}混在一起是什么颜色？", f"把{c(x1)}和{c(y1)}混在一起，会变成什么颜色？"]),
             f"{c(x1)}和{c(y1)}混在一起会变成{c(z1)}。"),
            (f"那{c(x2)}和{c(y2)}呢？", f"{c(x2)}和{c(y2)}混在一起会变成{c(z2)}。")]


def sft_en_calendar(rng: random.Random) -> list[QA]:
    i = rng.randrange(7)
    day = lambda k: EN_DAYS[(i + k) % 7]  # noqa: E731
    kind = rng.choice(["after", "before", "today", "today", "month", "week"])
    if kind == "after":
        return [(f"What day comes after {day(0)}?", f"{day(1)} comes after {day(0)}."),
                ("And the day after that?", f"{day(2)} comes after {day(1)}.")]
    if kind == "before":
        return [(f"What day comes before {day(0)}?", f"{day(-1)} comes before {day(0)}."),
                (f"And what day comes after {day(0)}?", f"{day(1)} comes after {day(0)}.")]
    if kind == "today":
        asks = [("tomorrow", f"tomorrow is {day(1)}"), ("yesterday", f"yesterday was {day(-1)}"),
                ("the day after tomorrow", f"the day after tomorrow is {day(2)}")]
        (w1, a1), (w2, a2) = rng.sample(asks, 2)
        v1, v2 = ("was" if w1 == "yesterday" else "is"), ("was" if w2 == "yesterday" else "is")
        return [(f"If today is {day(0)}, what day {v1} {w1}?", f"If today is {day(0)}, {a1}."),
                (f"And what day {v2} {w2}?", f"If today is {day(0)}, {a2}.")]
    if kind == "month":
        m = rng.randrange(12)
        return [(f"What month comes after {EN_MONTHS[m]}?", f"{EN_MONTHS[(m + 1) % 12]} comes after {EN_MONTHS[m]}."),
                ("How many months are there in a year?", "There are twelve months in a year.")]
    first, second = rng.sample([
        ("How many days are there in a week?", "There are seven days in a week."),
        ("Which days are the weekend?", "Saturday and Sunday are the weekend."),
        ("Can you name the days of the week in order?", ", ".join(EN_DAYS[:-1]) + " and Sunday."),
    ], 2)
    return [first, second]


def sft_zh_calendar(rng: random.Random) -> list[QA]:
    i = rng.randrange(7)
    day = lambda k: ZH_DAYS[(i + k) % 7]  # noqa: E731
    kind = rng.choice(["after", "before", "today", "today", "month", "week"])
    if kind == "after":
        return [(f"{day(0)}的后一天是星期几？", f"{day(0)}的后一天是{day(1)}。"),
                ("再后一天呢？", f"{day(1)}的后一天是{day(2)}。")]
    if kind == "before":
        return [(f"{day(0)}的前一天是星期几？", f"{day(0)}的前一天是{day(-1)}。"),
                (f"那{day(0)}的后一天呢？", f"{day(0)}的后一天是{day(1)}。")]
    if kind == "today":
        asks = [("明天", day(1)), ("昨天", day(-1)), ("后天", day(2))]
        (w1, d1), (w2, d2) = rng.sample(asks, 2)
        return [(f"如果今天是{day(0)}，{w1}是星期几？", f"如果今天是{day(0)}，{w1}就是{d1}。"),
                (f"那{w2}呢？", f"如果今天是{day(0)}，{w2}就是{d2}。")]
    if kind == "month":
        m = rng.randrange(12)
        return [(f"{zh_num(m + 1)}月过后是几月？", f"{zh_num(m + 1)}月过后是{zh_num((m + 1) % 12 + 1)}月。"),
                ("一年有几个月？", "一年有十二个月。")]
    first, second = rng.sample([
        ("一个星期有几天？", "一个星期有七天。"),
        ("星期几是周末？", "星期六和星期日是周末。"),
        ("请按顺序说出一个星期的七天。", "、".join(ZH_DAYS[:-1]) + "和星期日。"),
    ], 2)
    return [first, second]


def _pick_animal_qa(rng: random.Random) -> tuple[tuple, tuple]:
    first = rng.choice(ANIMAL_QA)
    same_group = [x for x in ANIMAL_QA if x[0] == first[0] and x is not first]
    return first, rng.choice(same_group)


def sft_en_animal_facts(rng: random.Random) -> list[QA]:
    (_, q1, a1, _, _), (_, q2, a2, _, _) = _pick_animal_qa(rng)
    return [(q1, a1), (q2, a2)]


def sft_zh_animal_facts(rng: random.Random) -> list[QA]:
    (_, _, _, q1, a1), (_, _, _, q2, a2) = _pick_animal_qa(rng)
    return [(q1, a1), (q2, a2)]


def sft_en_counting(rng: random.Random) -> list[QA]:
    words = rng.random() < 0.6
    fmt = en_num if words else str
    kind = rng.choice(["count", "count", "next", "scene"])
    if kind == "count":
        n = rng.randint(3, 10)
        return [(rng.choice([f"Count from {fmt(1)} to {fmt(n)}.", f"Please count from {fmt(1)} to {fmt(n)}."]),
                 cap(", ".join(fmt(i) for i in range(1, n + 1))) + "."),
                (f"Now count back down from {fmt(n)} to {fmt(1)}.",
                 cap(", ".join(fmt(i) for i in range(n, 0, -1))) + ".")]
    if kind == "next":
        n = rng.randint(2, 19)
        return [(f"What number comes after {fmt(n)}?", cap(f"{fmt(n + 1)} comes after {fmt(n)}.")),
                (f"And what number comes before {fmt(n)}?", cap(f"{fmt(n - 1)} comes before {fmt(n)}."))]
    key, loc_en, _ = rng.choice(COUNTING_SCENES)
    sing, plur = ANIMALS[key]["en"], ANIMALS[key]["en_pl"]
    cnt = lambda k: f"{fmt(k)} {sing if k == 1 else plur}"  # noqa: E731
    n, extra = rng.randint(2, 8), rng.randint(1, 4)
    gone = rng.randint(1, min(3, n + extra - 1))
    return [(f"There are {cnt(n)} {loc_en}. Then {fmt(extra)} more {'comes' if extra == 1 else 'come'}. "
             f"How many {plur} are there now?",
             f"There are {cnt(n + extra)} now, because {_en_eq(n, '+', extra, fmt)}."),
            (f"If {fmt(gone)} of them {'goes' if gone == 1 else 'go'} away, how many are left?",
             f"{cap(cnt(n + extra - gone))} {'is' if n + extra - gone == 1 else 'are'} left, "
             f"because {_en_eq(n + extra, '-', gone, fmt)}.")]


def sft_zh_counting(rng: random.Random) -> list[QA]:
    hanzi = rng.random() < 0.6
    cnt, num = (zh_count, zh_num) if hanzi else (str, str)
    kind = rng.choice(["count", "count", "next", "scene"])
    if kind == "count":
        n = rng.randint(3, 10)
        return [(rng.choice([f"从{num(1)}数到{num(n)}。", f"请从{num(1)}数到{num(n)}。"]),
                 "、".join(num(i) for i in range(1, n + 1)) + "。"),
                (f"现在从{num(n)}倒着数到{num(1)}。", "、".join(num(i) for i in range(n, 0, -1)) + "。")]
    if kind == "next":
        n = rng.randint(2, 19)
        return [(f"{num(n)}后面的数是几？", f"{num(n)}后面的数是{num(n + 1)}。"),
                (f"那{num(n)}前面的数呢？", f"{num(n)}前面的数是{num(n - 1)}。")]
    key, _, loc_zh = rng.choice(COUNTING_SCENES)
    zh, mw = ANIMALS[key]["zh"], ANIMALS[key]["mw"]
    n, extra = rng.randint(2, 8), rng.randint(1, 4)
    gone = rng.randint(1, min(3, n + extra - 1))
    return [(f"{loc_zh}有{cnt(n)}{mw}{zh}，又来了{cnt(extra)}{mw}。现在一共有几{mw}{zh}？",
             f"现在一共有{cnt(n + extra)}{mw}{zh}，因为{_zh_eq(n, '+', extra, num)}。"),
            (f"如果走了{cnt(gone)}{mw}，还剩几{mw}？",
             f"还剩{cnt(n + extra - gone)}{mw}，因为{_zh_eq(n + extra, '-', gone, num)}。")]


def _story_setting(rng: random.Random, key: str) -> tuple[str, dict, str]:
    """A place where the animal `key` can be met, and its colour."""
    place_key = rng.choice([k for k, pl in PLACES.items() if key in pl["animals"]])
    return place_key, PLACES[place_key], rng.choice(ANIMALS[key]["colours"])


def sft_en_story(rng: random.Random) -> list[QA]:
    key = rng.choice(list(ANIMALS))
    animal = ANIMALS[key]
    a = animal["en"]
    name, g = pick_person(rng, "en")
    p, _, poss = EN_PRONOUNS[g]
    if rng.random() < 0.3:
        q = f"Tell me a short story about {name} and {a_an(a)}."
    else:
        q = rng.choice([f"Tell me a short story about {a_an(a)}.", f"Write a short story about {a_an(a)}.",
                        f"Can you tell me a little story about {a_an(a)}?"])
    place_key, place, colour = _story_setting(rng, key)
    spot = rng.choice(place["en_spots"])
    time_en = rng.choice(TIMES)[0]
    s = []
    if rng.random() < 0.5:
        s.append(f"On {rng.choice(EN_DAYS)} {time_en}, {name} {place['en_go']}.")
    else:
        s.append(f"One {WEATHER[rng.choice(list(WEATHER))]['en']} {time_en}, {name} {place['en_go']}.")
    s.append(f"{cap(p)} saw {a_an(rng.choice(['little', 'big', 'small', 'young']))} {COLOURS[colour][0]} {a} {spot}.")
    if rng.random() < 0.5:
        s.append(rng.choice([f"The {a} was {rng.choice(['sleeping', 'looking around', 'eating something'])}.",
                             f"{name} felt {rng.choice(ENCOUNTER_FEELINGS)[0]}."]))
    endings = [f"{cap(p)} sat down quietly and watched the {a} for a long time.",
               f"When {p} came closer, the {a} {animal['en_away']}.",
               f"{cap(p)} drew a picture of the {a} in {poss} notebook."]
    if animal["en_sound"]:
        endings.append(f"{cap(p)} said hello, and the {a} {animal['en_sound']}.")
    s.append(rng.choice(endings))
    first = (q, " ".join(s))
    follow = rng.choice([
        (f"What colour was the {a}?", f"The {a} was {COLOURS[colour][0]}."),
        (f"Where did {name} see the {a}?", f"{name} saw the {a} {spot}, {EN_PLACE_NAMES[place_key]}."),
        ("Can you give the story a title?", f"A good title is \"{name} and the {cap(COLOURS[colour][0])} {cap(a)}\"."),
    ])
    return [first, follow]


def sft_zh_story(rng: random.Random) -> list[QA]:
    key = rng.choice(list(ANIMALS))
    animal = ANIMALS[key]
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    if rng.random() < 0.3:
        q = f"讲一个关于{name}和{animal['zh']}的小故事吧。"
    else:
        q = rng.choice([f"给我讲一个关于{animal['zh']}的小故事。", f"请写一个关于{animal['zh']}的短故事。",
                        f"你能讲一个{animal['zh']}的小故事吗？"])
    place_key, place, colour = _story_setting(rng, key)
    spot = rng.choice(place["zh_spots"])
    a = rng.choice(["小", "大"]) + animal["zh"]
    mw = animal["mw"]
    s = [f"{rng.choice(ZH_DAYS)}{rng.choice(TIMES)[1]}，{name}{place['zh_go']}。",
         f"{p}在{spot}看见了一{mw}{COLOURS[colour][1]}的{a}。"]
    if rng.random() < 0.5:
        s.append(rng.choice([f"{a}{rng.choice(['正在睡觉', '正在东张西望', '正在吃东西'])}。",
                             f"{name}觉得{rng.choice(ENCOUNTER_FEELINGS)[1]}。"]))
    endings = [f"{p}安静地坐下来，看了{a}很久。", f"{p}走近的时候，{a}{animal['zh_away']}。",
               f"{p}在本子上画了一幅{a}的画。"]
    if animal["zh_sound"]:
        endings.append(f"{p}跟{a}打了个招呼，{a}{animal['zh_sound']}。")
    s.append(rng.choice(endings))
    first = (q, "".join(s))
    where = ZH_PLACE_NAMES[place_key] if spot == "水边" else f"{ZH_PLACE_NAMES[place_key]}的{spot}"
    follow = rng.choice([
        (f"那{mw}{animal['zh']}是什么颜色的？", f"那{mw}{animal['zh']}是{COLOURS[colour][1]}的。"),
        (f"{name}是在哪里看见{animal['zh']}的？", f"{name}是在{where}看见它的。"),
        ("给这个故事起个名字吧。", f"可以叫《{name}和{COLOURS[colour][1]}的{animal['zh']}》。"),
    ])
    return [first, follow]


def sft_en_lists(rng: random.Random) -> list[QA]:
    kind = rng.choice(["farm", "fly", "colours"])
    if kind == "farm":
        keys = rng.sample(FARM_ANIMALS, 4)
        names = [ANIMALS[k]["en"] for k in keys]
        return [("Name three farm animals.", f"Three farm animals are the {names[0]}, the {names[1]} and the {names[2]}."),
                ("Can you name one more?", f"Another farm animal is the {names[3]}.")]
    if kind == "fly":
        keys = rng.sample(FLYING_ANIMALS, 3)
        pl = [ANIMALS[k]["en_pl"] for k in keys]
        return [("Name two animals that can fly.", f"{cap(pl[0])} and {pl[1]} can fly."),
                ("Is there another one?", f"Yes, {pl[2]} can fly too.")]
    keys = rng.sample(list(COLOURS), 4)
    return [("Name three colours.", f"Three colours are {keys[0]}, {keys[1]} and {keys[2]}."),
            ("Can you name one more?", f"Another colour is {keys[3]}.")]


def sft_zh_lists(rng: random.Random) -> list[QA]:
    kind = rng.choice(["farm", "fly", "colours"])
    if kind == "farm":
        names = [ANIMALS[k]["zh"] for k in rng.sample(FARM_ANIMALS, 4)]
        return [("说出三种农场里的动物。", f"{names[0]}、{names[1]}和{names[2]}都是农场里的动物。"),
                ("再说一种吧。", f"{names[3]}也是农场里的动物。")]
    if kind == "fly":
        names = [ANIMALS[k]["zh"] for k in rng.sample(FLYING_ANIMALS, 3)]
        return [("说出两种会飞的动物。", f"{names[0]}和{names[1]}都会飞。"),
                ("还有别的吗？", f"有，{names[2]}也会飞。")]
    names = [COLOURS[k][1] for k in rng.sample(list(COLOURS), 4)]
    return [("说出三种颜色。", f"{names[0]}、{names[1]}和{names[2]}都是颜色。"),
            ("再说一种吧。", f"{names[3]}也是一种颜色。")]


def sft_en_greeting(rng: random.Random) -> list[QA]:
    (q, a, _, _), (tq, ta, _, _) = rng.choice(GREETINGS), rng.choice(THANKS)
    return [(q, a), (tq, ta)]


def sft_zh_greeting(rng: random.Random) -> list[QA]:
    (_, _, q, a), (_, _, tq, ta) = rng.choice(GREETINGS), rng.choice(THANKS)
    return [(q, a), (tq, ta)]


# (weight, English generator, Chinese generator)
SFT_TOPICS: list[tuple[float, Callable[[random.Random], list[QA]], Callable[[random.Random], list[QA]]]] = [
    (18, sft_en_arithmetic, sft_zh_arithmetic),
    (10, sft_en_word_problem, sft_zh_word_problem),
    (6, sft_en_shopping, sft_zh_shopping),
    (8, sft_en_legs, sft_zh_legs),
    (10, sft_en_colours, sft_zh_colours),
    (10, sft_en_calendar, sft_zh_calendar),
    (7, sft_en_animal_facts, sft_zh_animal_facts),
    (5, sft_en_counting, sft_zh_counting),
    (18, sft_en_story, sft_zh_story),
    (5, sft_en_lists, sft_zh_lists),
    (3, sft_en_greeting, sft_zh_greeting),
]


def make_conversation(rng: random.Random, lang: str, shape: str) -> list[dict[str, str]]:
    """One conversation in `lang`; shape "single" (one question), "two" (and a follow-up) or
    "system" (a system prompt, then one question, sometimes with a follow-up)."""
    weights = [w for w, _, _ in SFT_TOPICS]
    _, en_gen, zh_gen = rng.choices(SFT_TOPICS, weights=weights)[0]
    pairs = (en_gen if lang == "en" else zh_gen)(rng)
    turns: list[dict[str, str]] = []
    if shape == "system":
        turns.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])})
        keep = 2 if rng.random() < SFT_SYSTEM_FOLLOW_UP else 1
    else:
        keep = 2 if shape == "two" else 1
    for question, answer in pairs[:keep]:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def conversation_key(turns: list[dict[str, str]]) -> tuple:
    """What makes two conversations the same: their user and assistant turns (a system prompt
    alone does not make a conversation new)."""
    return tuple((t["role"], t["content"]) for t in turns if t["role"] != "system")


def write_sft(path: Path, rng: random.Random, target_bytes: int, avoid: set[tuple]) -> dict:
    """Write conversations until the file reaches about target_bytes; skip any in `avoid`.

    Adds every written conversation to `avoid`, so a later call shares no conversation with this one.
    """
    size = lines = skipped = 0
    per_lang = {"en": 0, "zh": 0}
    per_shape = {"single": 0, "two": 0, "system": 0}
    languages: list[str] = []
    shapes: list[str] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        while size < target_bytes:
            if not languages:
                languages = LANGUAGE_BLOCK[:]
                rng.shuffle(languages)
            if not shapes:
                shapes = SFT_SHAPES[:]
                rng.shuffle(shapes)
            lang, shape = languages.pop(), shapes.pop()
            turns = make_conversation(rng, lang, shape)
            while conversation_key(turns) in avoid:  # draw again, same language and shape
                skipped += 1
                turns = make_conversation(rng, lang, shape)
            avoid.add(conversation_key(turns))
            line = json.dumps({"conversations": turns}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            lines += 1
            per_lang[lang] += 1
            per_shape[shape] += 1
    return dict(path=path, bytes=size, lines=lines, skipped_duplicates=skipped, **per_lang, **per_shape)


# --------------------------------------------------------------------------------------------
# A check of the written SFT files that does not use the generators: the format, and every
# arithmetic, leg-count, counting, day, month and colour-mixing claim in the answers, read back
# from the text and recomputed.
# --------------------------------------------------------------------------------------------

EN_NUMBER_WORDS = {en_num(n): n for n in range(101)}
_EN_NUM = r"(\d+|" + "|".join(sorted(EN_NUMBER_WORDS, key=len, reverse=True)) + r")"
_ZH_NUM = r"(\d+|[零一二两三四五六七八九十百]+)"


def _en_value(token: str) -> int:
    token = token.lower()
    return int(token) if token.isdigit() else EN_NUMBER_WORDS[token]


def _zh_value(token: str) -> int:
    if token.isdigit():
        return int(token)
    digits = {c: i for i, c in enumerate(ZH_DIGITS)} | {"两": 2}
    if token == "一百":
        return 100
    if "十" in token:
        head, _, tail = token.partition("十")
        return (digits[head] if head else 1) * 10 + (digits[tail] if tail else 0)
    if len(token) != 1:
        raise ValueError(f"not a Chinese number: {token!r}")
    return digits[token]


def _alternatives(words) -> str:
    return "(" + "|".join(sorted(words, key=len, reverse=True)) + ")"


_SYMBOL = {"plus": "+", "minus": "-", "times": "*", "divided by": "/",
           "加": "+", "减": "-", "乘以": "*", "除以": "/"}
_EN_SINGULAR = {v[0]: v[2] for v in LEG_ANIMALS.values()}
_EN_PLURAL = {v[1]: v[2] for v in LEG_ANIMALS.values()}
_ZH_LEGS = {v[3]: v[2] for v in LEG_ANIMALS.values()}
_COLOUR_MIX = {frozenset((COLOURS[x][i], COLOURS[y][i])): COLOURS[z][i]
               for x, y, z in COLOUR_MIX_KEYS for i in (0, 1)}
_ZH_COLOURS = _alternatives(c[1] for c in COLOURS.values())
_EN_DAY, _ZH_DAY, _EN_MONTH = _alternatives(EN_DAYS), _alternatives(ZH_DAYS), _alternatives(EN_MONTHS)
_EN_SHIFT = {"tomorrow is": 1, "yesterday was": -1, "the day after tomorrow is": 2}
_ZH_SHIFT = {"明天": 1, "昨天": -1, "后天": 2}

# (name, pattern, test on the matched groups -> True when the claim is right)
_CLAIMS: list[tuple[str, re.Pattern, Callable[[tuple], bool]]] = [
    ("en arithmetic", re.compile(rf"\b{_EN_NUM} (plus|minus|times|divided by) {_EN_NUM} (?:is|equals) {_EN_NUM}\b", re.I),
     lambda g: _apply(_en_value(g[0]), _SYMBOL[g[1]], _en_value(g[2])) == _en_value(g[3])
     and (g[1] != "divided by" or _en_value(g[0]) % _en_value(g[2]) == 0)),
    ("zh arithmetic", re.compile(rf"{_ZH_NUM}(加|减|乘以|除以){_ZH_NUM}等于{_ZH_NUM}"),
     lambda g: _apply(_zh_value(g[0]), _SYMBOL[g[1]], _zh_value(g[2])) == _zh_value(g[3])
     and (g[1] != "除以" or _zh_value(g[0]) % _zh_value(g[2]) == 0)),
    ("en legs", re.compile(rf"\b(?:an?|one|each) {_alternatives(_EN_SINGULAR)} has {_EN_NUM} legs\b", re.I),
     lambda g: _EN_SINGULAR[g[0]] == _en_value(g[1])),
    ("en legs", re.compile(rf"\b{_EN_NUM} {_alternatives(_EN_PLURAL)} have {_EN_NUM} legs\b", re.I),
     lambda g: _EN_PLURAL[g[1]] * _en_value(g[0]) == _en_value(g[2])),
    ("zh legs", re.compile(rf"(?:每|{_ZH_NUM})[只头匹]{_alternatives(_ZH_LEGS)}(?:一共)?有{_ZH_NUM}条腿"),
     lambda g: _ZH_LEGS[g[1]] * (_zh_value(g[0]) if g[0] else 1) == _zh_value(g[2])),
    ("en days", re.compile(rf"\b{_EN_DAY} comes (after|before) {_EN_DAY}\b"),
     lambda g: EN_DAYS.index(g[0]) == (EN_DAYS.index(g[2]) + (1 if g[1] == "after" else -1)) % 7),
    ("en days", re.compile(rf"If today is {_EN_DAY}, (the day after tomorrow is|tomorrow is|yesterday was) {_EN_DAY}\b"),
     lambda g: EN_DAYS.index(g[2]) == (EN_DAYS.index(g[0]) + _EN_SHIFT[g[1]]) % 7),
    ("zh days", re.compile(rf"{_ZH_DAY}的(后|前)一天是{_ZH_DAY}"),
     lambda g: ZH_DAYS.index(g[2]) == (ZH_DAYS.index(g[0]) + (1 if g[1] == "后" else -1)) % 7),
    ("zh days", re.compile(rf"如果今天是{_ZH_DAY}，(明天|昨天|后天)就是{_ZH_DAY}"),
     lambda g: ZH_DAYS.index(g[2]) == (ZH_DAYS.index(g[0]) + _ZH_SHIFT[g[1]]) % 7),
    ("en months", re.compile(rf"\b{_EN_MONTH} comes after {_EN_MONTH}\b"),
     lambda g: EN_MONTHS.index(g[0]) == (EN_MONTHS.index(g[1]) + 1) % 12),
    ("zh months", re.compile(rf"{_ZH_NUM}月过后是{_ZH_NUM}月"),
     lambda g: _zh_value(g[1]) == _zh_value(g[0]) % 12 + 1),
    ("en numbers", re.compile(rf"\b{_EN_NUM} comes (after|before) {_EN_NUM}\b", re.I),
     lambda g: _en_value(g[0]) == _en_value(g[2]) + (1 if g[1] == "after" else -1)),
    ("zh numbers", re.compile(rf"{_ZH_NUM}(后|前)面的数是{_ZH_NUM}"),
     lambda g: _zh_value(g[2]) == _zh_value(g[0]) + (1 if g[1] == "后" else -1)),
    ("en counting", re.compile(rf"^((?:{_EN_NUM}, )+{_EN_NUM})\.$", re.I),
     lambda g: _consecutive([_en_value(x) for x in g[0].split(", ")])),
    ("zh counting", re.compile(rf"^((?:{_ZH_NUM}、)+{_ZH_NUM})。$"),
     lambda g: _consecutive([_zh_value(x) for x in g[0].split("、")])),
    ("en colour mixing", re.compile(r"\b([a-z]+) and ([a-z]+) make ([a-z]+)\b", re.I),
     lambda g: _COLOUR_MIX.get(frozenset((g[0].lower(), g[1].lower()))) == g[2]),
    ("zh colour mixing", re.compile(rf"{_ZH_COLOURS}和{_ZH_COLOURS}混在一起会变成{_ZH_COLOURS}"),
     lambda g: _COLOUR_MIX.get(frozenset((g[0], g[1]))) == g[2]),
]


def _consecutive(values: list[int]) -> bool:
    step = values[1] - values[0]
    return step in (1, -1) and all(b - a == step for a, b in zip(values, values[1:]))


def check_sft(paths: list[Path]) -> tuple[dict[str, int], list[str]]:
    """Check SFT files: (claims checked per kind, problems). Problems are format errors, wrong
    claims, and conversations (user and assistant turns) that occur twice, in one file or across files."""
    claims: dict[str, int] = {}
    problems: list[str] = []
    seen: dict[tuple, str] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, start=1):
                where = f"{path.name}:{n}"
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    problems.append(f"{where}: not JSON ({e})")
                    continue
                turns = obj.get("conversations") if isinstance(obj, dict) else None
                if not isinstance(turns, list) or not turns or set(obj) != {"conversations"}:
                    problems.append(f"{where}: not a {{\"conversations\": [...]}} object")
                    continue
                if not all(isinstance(t, dict) and set(t) == {"role", "content"} and t["role"] in SFT_ROLES
                           and isinstance(t["content"], str) and t["content"].strip() for t in turns):
                    problems.append(f"{where}: a turn without a valid role and non-empty content")
                    continue
                roles = [t["role"] for t in turns]
                body = roles[1:] if roles[0] == "system" else roles
                if not body or body != ["user", "assistant"] * (len(body) // 2):
                    problems.append(f"{where}: turns are not (system), user, assistant, user, assistant...: {roles}")
                key = conversation_key(turns)
                if key in seen:
                    problems.append(f"{where}: same conversation as {seen[key]}")
                seen.setdefault(key, where)
                for t in turns:
                    if t["role"] != "assistant":
                        continue
                    for kind, pattern, test in _CLAIMS:
                        for m in pattern.finditer(t["content"]):
                            claims[kind] = claims.get(kind, 0) + 1
                            if not test(m.groups()):
                                problems.append(f"{where}: wrong {kind}: {m.group(0)!r}")
    return claims, problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where pretrain.jsonl, val.jsonl, sft.jsonl and sft_val.jsonl are written")
    parser.add_argument("--train-kb", type=float, default=250, help="approximate size of pretrain.jsonl in KiB")
    parser.add_argument("--val-kb", type=float, default=20, help="approximate size of val.jsonl in KiB")
    parser.add_argument("--sft-kb", type=float, default=120, help="approximate size of sft.jsonl in KiB")
    parser.add_argument("--sft-val-kb", type=float, default=12, help="approximate size of sft_val.jsonl in KiB")
    args = parser.parse_args(argv)

    seen: set[str] = set()
    # Separate, string-seeded streams: deterministic across runs and Python versions >= 3.2.
    train = write_corpus(args.out_dir / "pretrain.jsonl", random.Random(f"{args.seed}:train"),
                         int(args.train_kb * 1024), seen)
    val = write_corpus(args.out_dir / "val.jsonl", random.Random(f"{args.seed}:val"),
                       int(args.val_kb * 1024), seen)
    for stats in (train, val):
        print(f"{stats['path']}: {stats['lines']} documents, {stats['bytes']} bytes "
              f"({stats['en']} English, {stats['zh']} Chinese; "
              f"{stats['skipped_duplicates']} duplicates skipped)")

    # The SFT sample: two more streams of their own, so the pretraining files above do not change.
    seen_conversations: set[tuple] = set()
    sft = write_sft(args.out_dir / "sft.jsonl", random.Random(f"{args.seed}:sft"),
                    int(args.sft_kb * 1024), seen_conversations)
    sft_val = write_sft(args.out_dir / "sft_val.jsonl", random.Random(f"{args.seed}:sft_val"),
                        int(args.sft_val_kb * 1024), seen_conversations)
    for stats in (sft, sft_val):
        print(f"{stats['path']}: {stats['lines']} conversations, {stats['bytes']} bytes "
              f"({stats['en']} English, {stats['zh']} Chinese; {stats['single']} single-turn, "
              f"{stats['two']} two-turn, {stats['system']} with a system prompt; "
              f"{stats['skipped_duplicates']} duplicates skipped)")
    claims, problems = check_sft([sft["path"], sft_val["path"]])
    print("checked claims in the answers: " + ", ".join(f"{k} {v}" for k, v in sorted(claims.items())))
    if problems:
        raise SystemExit("SFT check failed:\n" + "\n".join(problems[:50]))


if __name__ == "__main__":
    main()
